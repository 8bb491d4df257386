"""Holding a registration retry: claim, lease, cancel, finish (both executors).

A local worker claims a waiting retry when it has no job to run; a Celery worker gets the
job's id in a message (the API sends one when the retry is asked) and claims that retry.
While the registry is called the lease is renewed every beat; a cancel, a lost lease or a
stopping worker ends the wait at once (:func:`app.services.jobs.execution.interruptible`).
The result is written under the retry's fencing token.
"""

from __future__ import annotations

import logging
import threading
import time

from app.db.base import utcnow
from app.db.repositories import Lease, RegistrationRepository
from app.engine.progress import ProgressEvent
from app.executors.runtime import JobRuntime
from app.services.jobs.registry_retry_run import register_again

__all__ = ["claim_registration", "has_registration", "run_held_registration"]

logger = logging.getLogger(__name__)


class _Stop(BaseException):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # cancelled | lease-lost | stopping


class _Control:
    """The retry's hooks: ``tick`` renews the lease every beat and raises :class:`_Stop`."""

    def __init__(self, runtime: JobRuntime, lease: Lease, stop_event: threading.Event) -> None:
        self.runtime, self.lease, self.stop_event = runtime, lease, stop_event
        self.last_beat = time.monotonic()

    def stage(self, name: str) -> None:
        pass  # the stage is the claim's (``registering``)

    def progress(self, event: ProgressEvent) -> None:
        self.tick()

    def tick(self) -> None:
        if self.stop_event.is_set():
            raise _Stop("stopping")
        if time.monotonic() - self.last_beat < self.runtime.beat:
            return
        self.last_beat = time.monotonic()
        with self.runtime.database.transaction() as session:
            held, cancel = RegistrationRepository(session).heartbeat(
                self.lease, now=utcnow(), lease_seconds=self.runtime.lease_seconds
            )
        if not held:
            raise _Stop("lease-lost")
        if cancel:
            raise _Stop("cancelled")


def has_registration(runtime: JobRuntime) -> bool:
    """Whether a registration retry waits (a cheap read)."""
    with runtime.database.transaction(write=False) as session:
        return RegistrationRepository(session).has_work(now=utcnow())


def claim_registration(runtime: JobRuntime, owner: str, job_id: str | None = None) -> Lease | None:
    """Claim a waiting registration retry (``job_id``'s, or the longest waiting)."""
    with runtime.database.transaction() as session:
        return RegistrationRepository(session).claim(
            owner=owner, now=utcnow(), lease_seconds=runtime.lease_seconds, job_id=job_id
        )


def run_held_registration(runtime: JobRuntime, lease: Lease, *, stop_event: threading.Event) -> str:
    """Run a claimed registration retry and record its result under the lease.

    Returns:
        ``finished`` (the result written: registered, or the new error), ``cancelled`` (the
        previous ``result.registry`` kept), ``released`` (given back: the worker is stopping)
        or ``lease-lost``.
    """
    control = _Control(runtime, lease, stop_event)
    try:
        registry = register_again(
            runtime.database, runtime.store, lease.job_id, settings=runtime.jobs, control=control
        )
    except _Stop as stop:
        if stop.reason == "lease-lost":
            logger.warning("job %s: registration retry taken over", lease.job_id)
            return "lease-lost"
        requeue = stop.reason == "stopping"
        with runtime.database.transaction() as session:
            RegistrationRepository(session).finish(
                lease, now=utcnow(), registry=None, requeue=requeue
            )
        logger.info("job %s: registration retry %s", lease.job_id, stop.reason)
        return "released" if requeue else "cancelled"
    with runtime.database.transaction() as session:
        held = RegistrationRepository(session).finish(lease, now=utcnow(), registry=registry)
    if not held:
        return "lease-lost"
    logger.info("job %s: registration retry ended: %s", lease.job_id, registry)
    return "finished"
