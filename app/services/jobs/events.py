"""What a job tells the outside world as it moves: stored events (SSE) and webhooks.

Every status change is recorded as an ``event: status`` carrying the job's public document,
and progress as ``event: progress``; the API streams them from the database
(``GET /v1/jobs/{id}/events``), so a reconnect with ``Last-Event-ID`` replays exactly what was
missed. A terminal status also puts the job's webhooks in the outbox, in the same
transaction that finishes the job, so neither is ever recorded without the other.

Both carry the job's public document, built by :func:`app.services.jobs.document.job_document`
(the API's schema, defined in the services so that executors need no HTTP types).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from anyio import CapacityLimiter, to_thread
from sqlalchemy.orm import Session

from app.db.models import TERMINAL_STATUSES, Job
from app.db.repositories import JobEventRepository, JobRepository
from app.db.session import Database
from app.services.errors import NotFoundError
from app.services.jobs.document import job_document
from app.services.webhooks.outbox import enqueue_webhooks

__all__ = [
    "Progress",
    "StoredEvent",
    "events_after",
    "follow_events",
    "open_stream",
    "record_progress",
    "record_status",
    "record_statuses",
]

# A comment line this often keeps proxies from closing a quiet stream.
_KEEPALIVE_SECONDS = 15.0
_POLL_THREADS = 4
_LIMITER: CapacityLimiter | None = None

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Progress:
    """One progress event: where the conversion is, in fractions and in counts."""

    stage: str
    progress: float
    tensors_done: int | None = None
    tensors_total: int | None = None
    bytes_done: int | None = None

    def data(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "progress": self.progress,
            "tensors_done": self.tensors_done,
            "tensors_total": self.tensors_total,
            "bytes_done": self.bytes_done,
        }


def record_status(session: Session, job: Job) -> int:
    """Record the job's current status as an event; a terminal one also queues its webhooks.

    Call it in the transaction that changed the status, after the change was flushed.

    Args:
        session: that transaction.
        job: the job, as it now is (refreshed).

    Returns:
        The event's sequence number.
    """
    document = job_document(job)
    terminal = job.status in TERMINAL_STATUSES
    seq = JobEventRepository(session).append(job.id, "status", document, terminal=terminal)
    if terminal:
        enqueue_webhooks(session, job, document)
    return seq


def record_statuses(session: Session, job_ids: list[str]) -> None:
    """:func:`record_status` for each job, as it now is in this transaction."""
    for job_id in job_ids:
        job = session.get(Job, job_id, populate_existing=True)
        if job is not None:
            record_status(session, job)


def record_progress(session: Session, job_id: str, progress: Progress) -> int:
    """Record one progress event (the executor throttles how often)."""
    return JobEventRepository(session).append(job_id, "progress", progress.data(), terminal=False)


@dataclass(frozen=True)
class StoredEvent:
    """One event as the SSE stream sends it."""

    seq: int
    event: str
    data: dict[str, Any]
    terminal: bool


def open_stream(database: Database, job_id: str, *, owner: str | None, last_event_id: int) -> bool:
    """Check a stream may start: the job is the caller's. Returns False when
    ``last_event_id`` is the job's terminal event (nothing more will ever come: 204).

    Raises:
        NotFoundError: no such job, or another owner's.
    """
    with database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id, owner=owner)
        if job is None:
            raise NotFoundError(f"no job with id {job_id!r}")
        if last_event_id <= 0:
            return True
        events = JobEventRepository(session)
        event = events.get(job_id, last_event_id)
        if event is not None and event.terminal:
            return False
        # A finished job has all its events: past the last one, nothing more will come.
        return not (
            job.status in TERMINAL_STATUSES and not events.after(job_id, last_event_id, limit=1)
        )


def events_after(session: Session, job_id: str, seq: int) -> list[StoredEvent]:
    """The job's stored events after ``seq``, in order."""
    return [
        StoredEvent(e.seq, e.event, e.data, e.terminal)
        for e in JobEventRepository(session).after(job_id, seq)
    ]


async def follow_events(
    database: Database, job_id: str, *, after: int, poll_seconds: float
) -> AsyncIterator[StoredEvent | None]:
    """The job's events after ``after`` as they are stored, until the terminal one.

    Yields ``None`` when nothing new came for a while (the caller sends a keep-alive). No
    thread is held between polls: each poll is one short read on the thread pool.
    """
    seq, idle = after, 0.0
    limiter = _poll_limiter()
    while True:
        events, finished = await to_thread.run_sync(
            _read_after, database, job_id, seq, limiter=limiter
        )
        for event in events:
            yield event
            seq = event.seq
            if event.terminal:
                return
        if events:
            idle = 0.0
            continue
        if finished:  # its terminal event was before ``after``, or it predates events
            return
        await asyncio.sleep(poll_seconds)
        idle += poll_seconds
        if idle >= _KEEPALIVE_SECONDS:
            idle = 0.0
            yield None


def _poll_limiter() -> CapacityLimiter:
    # Every stream's polls share a few threads: a thousand open streams cost a thousand
    # idle coroutines, not a thousand (or the default pool's forty) threads.
    global _LIMITER
    if _LIMITER is None:
        _LIMITER = CapacityLimiter(_POLL_THREADS)
    return _LIMITER


def _read_after(database: Database, job_id: str, seq: int) -> tuple[list[StoredEvent], bool]:
    """The events after ``seq`` and whether the job had finished, in one snapshot (a job's
    terminal status and its terminal event are committed together)."""
    with database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        finished = job is None or job.status in TERMINAL_STATUSES
        return events_after(session, job_id, seq), finished
