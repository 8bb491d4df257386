"""Sending jobs to an executor's queues: routing by device, after the job is committed.

With the local executor nothing is sent (workers claim from the database). With Celery the
database row stays the truth and the message carries only the job id, so sending twice is
harmless: the task claims the row or finds nothing to do. A job whose send failed (the
broker was down) keeps ``queue`` NULL, and a running job whose task ended without
finishing it keeps a lapsed lease; :func:`redispatch_unsent` sends both again.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Protocol

from app.db.base import utcnow
from app.db.models import JobStatus
from app.db.repositories import JobRepository, WorkerRepository
from app.db.session import Database

__all__ = [
    "GPU_WORKER_WINDOW",
    "Dispatcher",
    "dispatch_job",
    "dispatch_registration",
    "redispatch_unsent",
    "revoke_if_still_running",
    "route",
]

logger = logging.getLogger(__name__)

# SPEC §6: ``auto`` goes to ``gpu`` when a GPU worker heartbeated within this window.
GPU_WORKER_WINDOW = timedelta(minutes=1)
_FORGET_WORKERS = timedelta(days=1)


class Dispatcher(Protocol):
    """An executor's way in: send a job id to a queue, or stop the task running it."""

    def send(self, job_id: str, queue: str) -> None:
        """Send ``job_id`` to ``queue`` (``gpu`` or ``cpu``); raise if the broker refuses."""
        ...

    def revoke(self, job_id: str) -> None:
        """Stop the task running ``job_id`` by force (the cooperative cancel's fallback)."""
        ...


def route(database: Database, requested_device: str) -> str:
    """The queue for a job: ``cuda`` -> ``gpu``, ``cpu`` -> ``cpu``, ``auto`` -> ``gpu`` while
    a GPU worker is alive (heartbeat within :data:`GPU_WORKER_WINDOW`), else ``cpu``."""
    if requested_device in ("cuda", "cpu"):
        return "gpu" if requested_device == "cuda" else "cpu"
    with database.transaction(write=False) as session:
        alive = WorkerRepository(session).gpu_alive(since=utcnow() - GPU_WORKER_WINDOW)
    return "gpu" if alive else "cpu"


def dispatch_job(database: Database, dispatcher: Dispatcher, job_id: str) -> str | None:
    """Send a committed, queued job to its queue and record which. Never raises: a failed
    send is logged and left to :func:`redispatch_unsent`.

    Returns:
        The queue, or None when the job was not sent (no longer queued, or the send failed).
    """
    try:
        with database.transaction(write=False) as session:
            job = JobRepository(session).get(job_id)
            if job is None or job.status not in (JobStatus.queued, JobStatus.running):
                return None
            requested = job.requested_device
        queue = route(database, requested)
        dispatcher.send(job_id, queue)
        with database.transaction() as session:
            JobRepository(session).set_queue(job_id, queue)
    except Exception as exc:
        logger.warning("job %s: not sent to the broker (%s); will retry", job_id, exc)
        return None
    logger.info("job %s sent to queue %s", job_id, queue)
    return queue


def redispatch_unsent(database: Database, dispatcher: Dispatcher, *, age: float) -> int:
    """Recover what no message will bring to a worker: finish the jobs whose worker died
    (cancelled if asked, ``worker-lost`` when out of attempts), then send again the queued
    jobs never sent and the running jobs whose lease lapsed ``age`` seconds ago.

    Returns:
        How many were sent now.
    """
    now = utcnow()
    with database.transaction() as session:
        repo = JobRepository(session)
        repo.cancel_abandoned(now=now)
        repo.fail_exhausted(now=now)
        # Workers killed without a goodbye leave their record; routing ignores it after a
        # minute, and it is forgotten after a day.
        WorkerRepository(session).prune(before=now - _FORGET_WORKERS)
    with database.transaction(write=False) as session:
        ids = JobRepository(session).undispatched(before=now - timedelta(seconds=age))
    return sum(dispatch_job(database, dispatcher, job_id) is not None for job_id in ids)


def revoke_if_still_running(database: Database, dispatcher: Dispatcher, job_id: str) -> bool:
    """The cancel fallback: if the job is still running although a cancel was asked (its
    worker is stuck where no heartbeat reaches it), terminate its task.

    Returns:
        Whether a revoke was sent.
    """
    with database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        stuck = job is not None and job.status == JobStatus.running and job.cancel_requested
    if stuck:
        logger.warning("job %s: cancel not honoured in time; revoking its task", job_id)
        dispatcher.revoke(job_id)
    return stuck


def dispatch_registration(dispatcher: Dispatcher, job_id: str) -> bool:
    """Send a succeeded job's waiting registration retry to a worker (queue ``cpu``: it needs
    a registry, not a GPU). Never raises; a lost send is repaired by asking again.

    Returns:
        Whether it was sent.
    """
    try:
        dispatcher.send(job_id, "cpu")
    except Exception as exc:
        logger.warning("job %s: registration retry not sent (%s); ask again", job_id, exc)
        return False
    return True
