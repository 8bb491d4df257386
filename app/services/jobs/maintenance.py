"""Housekeeping that ``graft serve`` runs on a timer: lapsed leases and unreferenced blobs.

Leases: a job whose worker died stays ``running`` until its lease lapses; the reaper then
re-queues it (attempts left), fails it as ``worker-lost`` (none left) or finishes it as
``cancelled`` (a cancel was asked), whether or not any worker is polling.

Blobs: deleting a record frees its blobs once nothing references them. A blob is content
addressed and may be shared, and an upload or a job publishes its blob *before* committing
the record that references it, so a blob is collected only when (1) no checkpoint file or
artifact references it and (2) it was not published or re-claimed in the last
``claim_seconds`` (every publish of an existing blob refreshes its modification time). A
candidate that is still young is kept and retried on the next tick.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.repositories import CheckpointRepository, JobRepository, WorkerRepository
from app.db.session import Database
from app.services.jobs.dispatch import GPU_WORKER_WINDOW
from app.services.jobs.events import record_statuses
from app.storage import BlobStore

__all__ = ["BlobCollector", "LeaseSweep", "fail_device_waits", "finish_lapsed", "reap_leases"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseSweep:
    """What one pass over lapsed leases did."""

    requeued: int
    failed: int
    cancelled: int


def finish_lapsed(session: Session, *, now: datetime) -> tuple[list[str], list[str]]:
    """Finish the running jobs whose worker died and that will not run again: cancelled if a
    cancel was asked, failed (``worker-lost``) after their last attempt; each with its status
    event and webhooks. Returns ``(cancelled, failed)`` ids."""
    repo = JobRepository(session)
    # Failed first, then cancelled: a cancel asked between the two is honoured in this pass,
    # and a failed job is never one whose cancel was asked (fail_exhausted skips those).
    failed = repo.fail_exhausted(now=now)
    cancelled = repo.cancel_abandoned(now=now)
    record_statuses(session, [*cancelled, *failed])
    return cancelled, failed


def fail_device_waits(database: Database, *, wait_seconds: float) -> list[str]:
    """Fail (``device-unavailable``) the queued ``cuda`` jobs that waited ``wait_seconds``
    while no GPU worker was alive; while one is, they keep waiting their turn.

    Returns:
        Their ids.
    """
    now = utcnow()
    before = now - timedelta(seconds=wait_seconds)
    with database.transaction(write=False) as session:
        if not JobRepository(session).has_device_waits(before=before):
            return []
        if WorkerRepository(session).gpu_alive(since=now - GPU_WORKER_WINDOW):
            return []
    with database.transaction() as session:
        failed = JobRepository(session).fail_device_waits(now=now, before=before)
        record_statuses(session, failed)
    if failed:
        logger.warning("failed %d cuda job(s) that no GPU worker took in time", len(failed))
    return failed


def reap_leases(database: Database, *, device_wait_seconds: float | None = None) -> LeaseSweep:
    """Settle every running job whose lease has lapsed (see the module docstring), and fail
    the ``cuda`` jobs that waited past ``device_wait_seconds`` for a GPU worker."""
    if device_wait_seconds is not None:
        fail_device_waits(database, wait_seconds=device_wait_seconds)
    now = utcnow()
    with database.transaction(write=False) as session:
        if not JobRepository(session).has_work(now=now):
            return LeaseSweep(0, 0, 0)
    with database.transaction() as session:
        cancelled, failed = finish_lapsed(session, now=now)
        # Attempts left: back to the queue (a local worker's claim would also take them).
        requeued = JobRepository(session).requeue_lapsed(now=now)
    sweep = LeaseSweep(requeued, len(failed), len(cancelled))
    if requeued or failed or cancelled:
        logger.warning("lapsed leases: %s", sweep)
    return sweep


class BlobCollector:
    """Blobs that may have lost their last reference, collected once safe to.

    Args:
        database: where references are looked up.
        store: where the blobs live.
        claim_seconds: a blob modified this recently may be claimed by a commit in flight.
    """

    def __init__(self, database: Database, store: BlobStore, *, claim_seconds: float) -> None:
        self.database = database
        self.store = store
        self.claim_seconds = claim_seconds
        self._pending: set[str] = set()
        self._lock = threading.Lock()

    def add(self, digests: Iterable[str]) -> None:
        """Remember blobs whose record was just deleted (after that deletion commits)."""
        with self._lock:
            self._pending.update(digests)

    def _referenced(self, digest: str) -> bool:
        # Asked again right before deleting: a record committed since the first look keeps it.
        with self.database.transaction(write=False) as session:
            return bool(CheckpointRepository(session).referenced_blobs([digest]))

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)

    def collect(self) -> int:
        """Delete the pending blobs nothing references and nobody claimed lately.

        Returns:
            How many blobs were deleted.
        """
        with self._lock:
            candidates, self._pending = self._pending, set()
        if not candidates:
            return 0
        with self.database.transaction(write=False) as session:
            live = CheckpointRepository(session).referenced_blobs(sorted(candidates))
        young: set[str] = set()
        removed = 0
        cutoff = time.time() - self.claim_seconds
        for digest in sorted(candidates - live):
            modified = self.store.modified(digest)
            if modified is None:
                continue  # already gone
            if modified >= cutoff:
                young.add(digest)
                continue
            if self.store.collect(
                digest, claimed_since=cutoff, referenced=functools.partial(self._referenced, digest)
            ):
                removed += 1
            elif self.store.modified(digest) is not None:
                young.add(digest)  # claimed meanwhile: looked at again (and dropped if referenced)
        if young:
            self.add(young)
        if removed:
            logger.info("collected %d unreferenced blob(s)", removed)
        return removed
