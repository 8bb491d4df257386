"""One ``graft serve`` per embedded data folder.

On the embedded defaults (a SQLite file and the local blob folder) two servers started in one
folder share the database, so each one's workers would claim the other's jobs, with the other
server's settings. The first server holds an exclusive ``flock`` on ``<database>.lock`` (its
pid written inside) for as long as it runs; a second one is refused, in one line that names
the holder and what to do. The kernel drops the lock when the process dies, however it dies,
so a stale file never blocks. With PostgreSQL or S3 (a shared deployment) several servers
are the point, and nothing is locked: each worker claims only the jobs it can run.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from sqlalchemy.engine import make_url

from app.config import Settings
from app.errors import GraftError

__all__ = ["ServerRunningError", "hold_instance_lock", "instance_lock_path"]


class ServerRunningError(GraftError):
    """Another ``graft serve`` already runs on this embedded database."""

    type = "server-running"
    status = 409


def instance_lock_path(settings: Settings) -> Path | None:
    """The lock file of an embedded deployment (``data/graft.db.lock``), or None when the
    database or the blob store is shared (PostgreSQL, S3, an in-memory SQLite)."""
    url = make_url(settings.database_url)
    local_store = not settings.storage_url or settings.storage_url.startswith("file://")
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database + ".lock") if local_store else None


def hold_instance_lock(settings: Settings) -> IO[str] | None:
    """Take the embedded deployment's lock for this process's lifetime.

    Returns:
        The open lock file (keep it open: closing it releases the lock), or None when the
        deployment is shared and takes none.

    Raises:
        ServerRunningError: another process holds it; the message names its pid and what to do.
    """
    path = instance_lock_path(settings)
    if path is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = path.open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown"
        handle.close()
        raise ServerRunningError(
            f"another graft serve (pid {holder}) already uses {path.with_suffix('')}, and its "
            "workers "
            "would run this server's jobs: stop it, or give this one its own folder "
            "(GRAFT_DATABASE_URL and GRAFT_STORAGE_DIR)"
        ) from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
