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
from app.db.secret_box import secret_box_for
from app.db.session import Database
from app.services.auth import AuthMode, resolve_mode
from app.storage import BlobStore, open_store

__all__ = ["bind_host", "collect_unreferenced_blobs", "is_loopback", "prepare"]

logger = logging.getLogger(__name__)


def prepare(settings: Settings) -> None:
    """Apply Alembic migrations to head, remove temp files of dead processes and blobs no
    record references."""
    database = Database(
        settings.database_url,
        busy_timeout_ms=settings.busy_timeout_ms,
        secret_box=secret_box_for(settings),  # the migrations seal secrets stored before
    )
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


def is_loopback(host: str) -> bool:
    """Whether ``host`` names a loopback interface only."""
    with contextlib.suppress(ValueError):  # a host name, not an address
        return ipaddress.ip_address(host).is_loopback
    return host == "localhost"


def bind_host(settings: Settings, host: str) -> tuple[str, str]:
    """Where ``graft serve`` may listen, and the ``GRAFT_AUTH`` value it must run with.

    ``local`` mode (or ``auto`` before any key was created) listens on loopback only,
    whatever ``host`` says. A server that listens beyond loopback runs in ``keys`` mode: it
    never accepts an anonymous request, even if every key is later revoked.

    Returns:
        ``(host, auth)``.
    """
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    try:
        with database.transaction(write=False) as session:
            mode: AuthMode = resolve_mode(session, settings.auth)
    finally:
        database.dispose()
    if mode == "keys":
        logger.info("authentication is on: every request needs `Authorization: Bearer`")
        return host, settings.auth if is_loopback(host) else "keys"
    if not is_loopback(host):
        logger.warning(
            "no API key was ever created (GRAFT_AUTH=%s), so the service listens on 127.0.0.1 "
            "only (not %s); create one with `graft keys create` to serve other hosts",
            settings.auth,
            host,
        )
        return "127.0.0.1", settings.auth
    logger.warning(
        "listening on %s (loopback only) without authentication (GRAFT_AUTH=%s); "
        "`graft keys create` turns authentication on for good",
        host,
        settings.auth,
    )
    return host, settings.auth
