"""Engines and sessions.

SQLite is opened in WAL mode with ``synchronous=FULL`` and a busy timeout, and write
transactions start with ``BEGIN IMMEDIATE`` so two writers never deadlock on a lock upgrade:
the second waits (up to the busy timeout) at ``BEGIN`` instead of failing at ``COMMIT``.
Read-only work uses a plain deferred ``BEGIN``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

if TYPE_CHECKING:
    from app.db.secret_box import SecretBox

__all__ = ["Database"]

_WRITE_OPTION = "graft_write"


def _sqlite_file(url: str) -> Path | None:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def _install_sqlite_hooks(engine: Engine, busy_timeout_ms: int) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event emit BEGIN itself (pysqlite's own handling would
        # start transactions lazily and always DEFERRED).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class Database:
    """One engine per process, with a read and a write session factory.

    Args:
        url: SQLAlchemy URL.
        busy_timeout_ms: how long SQLite waits for a lock before giving up.
        connect_args: extra DBAPI connect arguments (tests use it for a PostgreSQL schema).
        secret_box: seals and opens the secrets its sessions store (``None``: a process that
            never touches them; one that tries gets an error, never a plain secret).
    """

    def __init__(
        self,
        url: str,
        *,
        busy_timeout_ms: int = 30_000,
        connect_args: dict[str, Any] | None = None,
        secret_box: SecretBox | None = None,
    ) -> None:
        self.url = url
        self.secret_box = secret_box
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        args = dict(connect_args or {})
        if self.is_sqlite:
            path = _sqlite_file(url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            args.setdefault("check_same_thread", False)
            args.setdefault("timeout", busy_timeout_ms / 1000)
        self.engine = create_engine(url, connect_args=args, pool_pre_ping=not self.is_sqlite)
        if self.is_sqlite:
            _install_sqlite_hooks(self.engine, busy_timeout_ms)
        self._write_engine = self.engine.execution_options(**{_WRITE_OPTION: True})
        info: dict[object, object] = {}
        if secret_box is not None:
            secret_box.attach(info)
        self._reader = sessionmaker(self.engine, expire_on_commit=False, info=info)
        self._writer = sessionmaker(self._write_engine, expire_on_commit=False, info=info)

    def reader(self) -> Session:
        """A session for read-only work (deferred BEGIN)."""
        return self._reader()

    def writer(self) -> Session:
        """A session whose transaction takes the write lock up front (BEGIN IMMEDIATE)."""
        return self._writer()

    @contextlib.contextmanager
    def transaction(self, *, write: bool = True) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any exception."""
        session = self.writer() if write else self.reader()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Raise unless the database answers (readiness)."""
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def dispose(self) -> None:
        self.engine.dispose()
