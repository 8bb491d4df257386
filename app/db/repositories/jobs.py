"""Queries for jobs: pages, cancellation, claims and leases, and finishing.

``owner=None`` in a query means every owner: workers and admins; API callers pass theirs.
Repositories flush; the caller's unit of work commits.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    Job,
    JobStatus,
)
from app.db.repositories._page import page

__all__ = ["JobClaim", "JobRepository"]


class JobRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, job_id: str, *, owner: str | None = None) -> Job | None:
        job = self.session.get(Job, job_id)
        if job is None or (owner is not None and job.owner != owner):
            return None
        return job

    def add(self, job: Job) -> Job:
        self.session.add(job)
        self.session.flush()
        return job

    def page(
        self, *, offset: int, limit: int, status: str | None = None, owner: str | None = None
    ) -> tuple[list[Job], int]:
        where = [Job.status == status] if status else []
        if owner is not None:
            where.append(Job.owner == owner)
        order = (Job.created_at.desc(), Job.id)
        return page(self.session, Job, where=where, order_by=order, offset=offset, limit=limit)

    def cancel_queued(self, job_id: str, *, now: datetime) -> bool:
        """Cancel a job no worker holds. Returns whether it was queued."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.queued)
            .values(status=JobStatus.cancelled, finished_at=now, updated_at=now, stage=None)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def request_cancel(self, job_id: str, *, now: datetime) -> bool:
        """Ask the worker running a job to stop. Returns whether it was running."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.running)
            .values(cancel_requested=True, updated_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def fail_exhausted(self, *, now: datetime) -> list[str]:
        """Fail running jobs whose lease lapsed after their last allowed attempt.

        Returns:
            Their ids (their status events and webhooks are recorded by the caller).
        """
        result = self.session.execute(
            update(Job)
            .where(
                Job.status == JobStatus.running,
                Job.lease_expires_at < now,
                Job.attempts >= Job.max_attempts,
            )
            .values(
                status=JobStatus.failed,
                error_type="worker-lost",
                error_message="the worker running this job stopped (crashed or was killed) "
                "on every attempt; check the input, then submit it again",
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return list(result.scalars())

    def cancel_abandoned(self, *, now: datetime) -> list[str]:
        """Finish as cancelled the running jobs whose worker died after cancel was asked.

        Returns:
            Their ids.
        """
        result = self.session.execute(
            update(Job)
            .where(
                Job.status == JobStatus.running,
                Job.lease_expires_at < now,
                Job.cancel_requested.is_(True),
            )
            .values(
                status=JobStatus.cancelled,
                finished_at=now,
                updated_at=now,
                lease_owner=None,
                lease_expires_at=None,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return list(result.scalars())

    def requeue_lapsed(self, *, now: datetime) -> int:
        """Put back in the queue the running jobs whose lease lapsed with attempts left (their
        worker died); the attempt it used stays counted."""
        result = self.session.execute(
            update(Job)
            .where(
                Job.status == JobStatus.running,
                Job.lease_expires_at < now,
                Job.attempts < Job.max_attempts,
                Job.cancel_requested.is_not(True),
            )
            .values(
                status=JobStatus.queued,
                lease_owner=None,
                lease_expires_at=None,
                stage=None,
                progress=0.0,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    @staticmethod
    def _claimable(now: datetime, *, mlflow: bool = True) -> ColumnElement[bool]:
        claimable = and_(
            Job.attempts < Job.max_attempts,
            or_(
                Job.status == JobStatus.queued,
                and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
            ),
        )
        return claimable if mlflow else and_(claimable, ~_needs_mlflow())

    def has_work(self, *, now: datetime, mlflow: bool = True) -> bool:
        """Whether a claim (or an expiry sweep) has anything to do; a cheap read that spares
        idle workers a write transaction every poll."""
        lapsed = and_(Job.status == JobStatus.running, Job.lease_expires_at < now)
        claimable = self._claimable(now, mlflow=mlflow)
        return bool(self.session.scalar(select(exists().where(or_(claimable, lapsed)))))

    def claim(
        self, *, owner: str, now: datetime, lease_seconds: float, mlflow: bool = True
    ) -> str | None:
        """Take the oldest claimable job in one UPDATE. Returns its id, or None.

        Claimable: queued, or running with a lapsed lease (its worker died) and attempts
        left; for a worker without MLflow (``mlflow=False``), not a job that needs it (a
        ``models:/`` source or ``output.register``): another worker, configured for it, runs
        that one. The condition is repeated in the outer WHERE so that, on PostgreSQL, a
        concurrent claimer that lost the race updates nothing; SKIP LOCKED keeps them apart.
        """
        claimable = self._claimable(now, mlflow=mlflow)
        candidate = (
            select(Job.id)
            .where(claimable)
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = self.session.execute(
            update(Job)
            .where(Job.id == candidate, claimable)
            .values(_claim_values(owner, now, lease_seconds))
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return result.scalar_one_or_none()

    def claim_job(
        self, job_id: str, *, owner: str, now: datetime, lease_seconds: float
    ) -> JobClaim:
        """Take one named job (a message from a broker named it), if it is claimable.

        Returns:
            ``claimed``; ``busy`` with the seconds until the holder's lease lapses (a
            redelivery while the previous holder is alive); ``gone`` when there is nothing to
            do (finished, cancelled, unknown, or out of attempts).
        """
        claimable = and_(Job.id == job_id, self._claimable(now))
        result = self.session.execute(
            update(Job)
            .where(claimable)
            .values(_claim_values(owner, now, lease_seconds))
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        if result.scalar_one_or_none() is not None:
            return JobClaim("claimed")
        row = self.session.execute(
            select(Job.status, Job.lease_expires_at, Job.attempts, Job.max_attempts).where(
                Job.id == job_id
            )
        ).first()
        if row is None or row.status != JobStatus.running or row.lease_expires_at is None:
            return JobClaim("gone")
        if row.lease_expires_at >= now:
            return JobClaim("busy", (row.lease_expires_at - now).total_seconds())
        return JobClaim("gone")  # lapsed with no attempts left: fail_exhausted's business

    def set_queue(self, job_id: str, queue: str) -> None:
        """Record the queue a job was sent to."""
        self.session.execute(update(Job).where(Job.id == job_id).values(queue=queue))

    def undispatched(self, *, before: datetime, limit: int = 100) -> list[str]:
        """Jobs no message will bring to a worker, the oldest first: queued but never sent
        (the send failed), or running with a lease that lapsed before ``before`` and
        attempts left (their task ended without finishing them, e.g. the database was
        away when it tried)."""
        never_sent = and_(
            Job.status == JobStatus.queued, Job.queue.is_(None), Job.created_at < before
        )
        orphaned = and_(
            Job.status == JobStatus.running,
            Job.lease_expires_at < before,
            Job.attempts < Job.max_attempts,
        )
        rows = self.session.scalars(
            select(Job.id).where(or_(never_sent, orphaned)).order_by(Job.created_at).limit(limit)
        )
        return list(rows)

    def heartbeat(
        self,
        job_id: str,
        *,
        owner: str,
        now: datetime,
        lease_seconds: float,
        stage: str | None = None,
        progress: float | None = None,
    ) -> tuple[bool, bool]:
        """Renew the lease (and record progress) if ``owner`` still holds it.

        Returns:
            ``(held, cancel_requested)``.
        """
        values: dict[str, Any] = {
            "lease_expires_at": now + timedelta(seconds=lease_seconds),
            "updated_at": now,
        }
        if stage is not None:
            values["stage"] = stage
        if progress is not None:
            values["progress"] = progress
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running)
            .values(**values)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        if row is None:
            return False, False
        return True, bool(row[0])

    def release(self, job_id: str, *, owner: str, now: datetime) -> bool:
        """Give a job back to the queue (graceful shutdown); the attempt is not counted."""
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running)
            .values(
                status=JobStatus.queued,
                attempts=Job.attempts - 1,
                lease_owner=None,
                lease_expires_at=None,
                stage=None,
                progress=0.0,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def finish(
        self,
        job_id: str,
        *,
        owner: str,
        now: datetime,
        status: JobStatus,
        ok: bool | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        device: str | None = None,
        source_id: str | None = None,
        result: dict[str, Any] | None = None,
        warnings: list[str] | None = None,
    ) -> bool:
        """Complete a job, only while ``owner`` holds its lease. Returns whether it did.

        ``source_id`` (a source fetched by reference) and ``result`` are written when given.
        """
        extra: dict[str, Any] = {}
        if source_id is not None:
            extra["source_id"] = source_id
        if result is not None:
            extra["result"] = result
        done = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.status == JobStatus.running)
            .values(
                status=status,
                ok=ok,
                error_type=error_type,
                error_message=error_message,
                device=device,
                warnings=warnings,
                finished_at=now,
                updated_at=now,
                progress=1.0 if status == JobStatus.succeeded else Job.progress,
                stage=None,
                lease_owner=None,
                lease_expires_at=None,
                **extra,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JobClaim:
    """The answer to a claim of one named job (see :meth:`JobRepository.claim_job`)."""

    kind: Literal["claimed", "busy", "gone"]
    retry_in: float = 0.0


def _needs_mlflow() -> ColumnElement[bool]:
    """A job that only a worker with an MLflow registry can run: a ``models:/`` source, or
    ``output.register`` (its ``name`` is always there). NULLs read as empty, so the negation
    is true for every other job."""
    return or_(
        func.coalesce(Job.register["name"].as_string(), "") != "",
        func.coalesce(Job.source_ref["uri"].as_string(), "").like("models:/%"),
    )


def _claim_values(owner: str, now: datetime, lease_seconds: float) -> dict[str, Any]:
    """What a claim writes: the lease, one more attempt, the start time (first claim only)."""
    return {
        "status": JobStatus.running,
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": Job.attempts + 1,
        "started_at": func.coalesce(Job.started_at, now),
        "updated_at": now,
        "stage": "claimed",
        "last_worker": owner,
    }
