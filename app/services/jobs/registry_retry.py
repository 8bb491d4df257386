"""Registering a succeeded job's result again, after the registry failed the first time.

A job whose conversion succeeded but whose registration failed stays ``succeeded`` with
``result.registry.error`` (SPEC §5.1). ``POST /v1/jobs/{id}/registry-retry`` asks for the
registration again (:func:`request_registry_retry`); a worker with an MLflow registry runs it
(:mod:`app.services.jobs.registry_retry_run`, which the API never imports), never the
request. Asking is safe to repeat: while a retry is waiting or running the same job is
answered, and once the job is registered it is answered as it is. Registering is itself
idempotent: the version is first looked up by its ``graft.job_id`` tag
(:func:`app.registry.mlflow_publish.register_version`), so neither a repeated retry nor a
retry of a registration that in fact went through makes a second version.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Job, JobStatus
from app.db.repositories import RegistrationRepository
from app.db.repositories.registrations import RETRY_QUEUED, RETRY_RUNNING
from app.services.errors import ConflictError
from app.services.jobs.service import get_job

__all__ = [
    "RetryAnswer",
    "RetryState",
    "registered",
    "request_registry_retry",
]


class RetryState(enum.StrEnum):
    """What a request for a registration retry did."""

    queued = "queued"  # a retry is now waiting for a worker
    in_flight = "in-flight"  # one was already waiting or running: nothing more was done
    registered = "registered"  # the job is registered: nothing to do


@dataclass(frozen=True)
class RetryAnswer:
    """The job as it is after the request, and what the request did."""

    job: Job
    state: RetryState

    @property
    def waiting(self) -> bool:
        """Whether the retry waits for a worker (a Celery message names it: sent on each
        request while it waits, so a lost message is repaired by asking again)."""
        return self.job.stage == RETRY_QUEUED


def registered(job: Job) -> bool:
    """Whether the job's result is registered (a version and no error)."""
    registry = (job.result or {}).get("registry") or {}
    return bool(registry.get("version")) and not registry.get("error")


def request_registry_retry(session: Session, job_id: str, *, owner: str | None) -> RetryAnswer:
    """Queue a registration retry of a succeeded job whose registration failed.

    Args:
        session: a write session (the caller's unit of work commits).
        job_id: the job.
        owner: the caller's owner scope (another owner's job is not found).

    Returns:
        The job and what was done: ``queued``, ``in-flight`` (already asked) or
        ``registered`` (nothing to retry: the job's version is there).

    Raises:
        NotFoundError: no such job (or another owner's).
        ConflictError: the job registers nothing, or has not succeeded.
    """
    job = get_job(session, job_id, owner=owner)
    if not (job.register or {}).get("name"):
        raise ConflictError(f"job {job_id} registers nothing (it has no output.register)")
    if job.status != JobStatus.succeeded:
        raise ConflictError(
            f"job {job_id} is {job.status}: only a succeeded job's registration can be retried"
            + ("" if job.status in ("failed", "cancelled") else "; it registers when it succeeds")
        )
    if job.stage in (RETRY_QUEUED, RETRY_RUNNING):
        return RetryAnswer(job, RetryState.in_flight)
    if registered(job):
        return RetryAnswer(job, RetryState.registered)
    queued = RegistrationRepository(session).request(job_id, now=utcnow())
    session.refresh(job)
    return RetryAnswer(job, RetryState.queued if queued else RetryState.in_flight)
