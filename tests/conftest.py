"""Shared fixtures, kept light: a migrated database (SQLite, or PostgreSQL when configured) and
a real S3 server."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.parts import DEFAULT_POSTGRES_URL, postgres_url, require_part
from tests.s3server import S3Server, serve_s3
from tests.schemas import validate_everything

# The Fernet key the fixtures' databases seal stored secrets with.
TEST_SECRET_KEY = "9wQ0lqvXoNq1b3ZcY1z8m5dXH0u2x6v1iQ7yq9kXb0A="


def pytest_configure(config: pytest.Config) -> None:
    """Default ``GRAFT_TEST_POSTGRES_URL`` to the local server when it answers, for this
    process and the servers and workers the tests start."""
    url = postgres_url()
    if url:
        os.environ.setdefault("GRAFT_TEST_POSTGRES_URL", url)


@pytest.fixture(autouse=True, scope="session")
def _documents_fit_their_schemas() -> Iterator[None]:
    """Every report and manifest a test produces is validated against its JSON Schema."""
    yield from validate_everything()


def _sqlite_database(path: Path):
    from app.db.migrate import upgrade
    from app.db.secret_box import SecretBox
    from app.db.session import Database

    database = Database(
        f"sqlite:///{path}", busy_timeout_ms=10_000, secret_box=SecretBox(TEST_SECRET_KEY)
    )
    upgrade(database)
    return database


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[object]:
    """A real SQLite file brought to head by Alembic."""
    database = _sqlite_database(tmp_path / "graft.db")
    yield database
    database.dispose()


@pytest.fixture
def postgres_database() -> Iterator[object]:
    """A fresh PostgreSQL schema brought to head by Alembic, dropped afterwards."""
    url = postgres_url()
    if not url:
        require_part(
            "PostgreSQL",
            f"GRAFT_TEST_POSTGRES_URL is not set and nothing answers at {DEFAULT_POSTGRES_URL}",
        )
    from sqlalchemy import create_engine, text

    from app.db.migrate import upgrade
    from app.db.session import Database

    schema = f"graft_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    from app.db.secret_box import SecretBox

    database = Database(
        url,
        connect_args={"options": f"-csearch_path={schema}"},
        secret_box=SecretBox(TEST_SECRET_KEY),
    )
    try:
        upgrade(database)
        yield database
    finally:
        database.dispose()
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_database(request: pytest.FixtureRequest) -> object:
    """Each repository test runs on SQLite and (when configured) on PostgreSQL."""
    name = "sqlite_database" if request.param == "sqlite" else "postgres_database"
    return request.getfixturevalue(name)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 server (``rclone serve s3``) over a temp folder, for the whole session."""
    root = tmp_path_factory.mktemp("s3") / "root"
    root.mkdir()
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(serve_s3(root))
        except RuntimeError as exc:
            require_part("S3 server (rclone serve s3)", str(exc))
        yield server
