"""Start-up chores for ``graft serve``: migrate the database, sweep orphan temp files."""

from __future__ import annotations

import logging

from app.config import Settings
from app.db.migrate import upgrade
from app.db.session import Database
from app.storage import BlobStore

__all__ = ["prepare"]

logger = logging.getLogger(__name__)


def prepare(settings: Settings) -> None:
    """Apply Alembic migrations to head and remove temp files of dead processes."""
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        upgrade(database)
    finally:
        database.dispose()
    BlobStore(settings.storage_dir).cleanup_orphans()
