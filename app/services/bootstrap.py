"""Start-up chores for ``graft serve``: migrate, recover from a crash, choose where to listen.

A ``kill -9`` of the API or a worker can leave, at most: temp files and folders under the
store's ``tmp/`` (uploads, work folders; with S3, temp keys too), blobs published but never
recorded (the crash fell between publish and commit), and jobs ``running`` under a dead
worker's lease. At start the first two are collected, and leases already past are settled by
the workers' claim sweep (re-queued, or failed once out of attempts). Records are only
committed after their blobs are published and fsynced, so no record ever points at a missing
file.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import time

from sqlalchemy import select

from app.config import Settings
from app.db.migrate import upgrade
from app.db.models import Artifact, CheckpointFile
from app.db.session import Database
from app.services.auth import keys_configured
from app.storage import BlobStore, open_store

__all__ = ["bind_host", "collect_unreferenced_blobs", "prepare"]

logger = logging.getLogger(__name__)


def prepare(settings: Settings) -> None:
    """Apply Alembic migrations to head, remove temp files of dead processes and blobs no
    record references."""
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        upgrade(database)
        store = open_store(settings)
        store.cleanup_orphans()
        collect_unreferenced_blobs(database, store, grace_seconds=settings.orphan_grace_seconds)
    finally:
        database.dispose()


def collect_unreferenced_blobs(
    database: Database, store: BlobStore, *, grace_seconds: float
) -> int:
    """Delete blobs that no checkpoint file or artifact references, once ``grace_seconds``
    old (a blob younger than that may belong to a commit in flight in another process).

    Returns:
        How many blobs were removed.
    """
    with database.transaction(write=False) as session:
        referenced = set(session.scalars(select(CheckpointFile.sha256)))
        referenced |= set(session.scalars(select(Artifact.sha256)))
    cutoff = time.time() - grace_seconds
    removed = 0
    for blob in store.blobs():
        if blob.sha256 in referenced or blob.modified > cutoff:
            continue
        store.delete(blob.sha256)
        removed += 1
    if removed:
        logger.warning("removed %d blob(s) that no record references (crash leftovers)", removed)
    return removed


def bind_host(settings: Settings, host: str) -> str:
    """Where ``graft serve`` may listen: anywhere once API keys exist, else loopback only."""
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        with database.transaction(write=False) as session:
            secured = keys_configured(session)
    finally:
        database.dispose()
    if secured:
        logger.info("API keys are configured: every request needs `Authorization: Bearer`")
        return host
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # a host name, not an address
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback:
        logger.warning(
            "no API keys are configured, so the service listens on 127.0.0.1 only (not %s); "
            "create one with `graft keys create` to serve other hosts",
            host,
        )
        return "127.0.0.1"
    logger.warning(
        "no API keys are configured: listening on %s (loopback only) without authentication; "
        "`graft keys create` turns authentication on",
        host,
    )
    return host
