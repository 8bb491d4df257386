"""A succeeded job's registration retry (``POST /v1/jobs/{id}/registry-retry``).

The job stays ``succeeded`` throughout; its ``stage`` says where the retry is:
``registry-retry`` (asked, waiting for a worker) then ``registering`` (a worker holds it, under
the job's own lease columns and fencing token, which a finished job no longer uses). A worker
that dies mid-retry leaves a lease that lapses, and the retry is claimable again. The finish
clears the stage and writes ``result.registry``; like a job's, it is fenced by the token.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from app.db.models import Job, JobStatus
from app.db.repositories.jobs import Lease

__all__ = ["RETRY_QUEUED", "RETRY_RUNNING", "RegistrationRepository"]

RETRY_QUEUED = "registry-retry"
RETRY_RUNNING = "registering"


def _claimable(now: datetime) -> ColumnElement[bool]:
    return and_(
        Job.status == JobStatus.succeeded,
        or_(
            Job.stage == RETRY_QUEUED,
            and_(Job.stage == RETRY_RUNNING, Job.lease_expires_at < now),
        ),
    )


def _held(lease: Lease) -> ColumnElement[bool]:
    return and_(
        Job.id == lease.job_id,
        Job.lease_token == lease.token,
        Job.lease_owner == lease.owner,
        Job.status == JobStatus.succeeded,
        Job.stage == RETRY_RUNNING,
    )


class RegistrationRepository:
    """The registration-retry queries on ``jobs``."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def request(self, job_id: str, *, now: datetime) -> bool:
        """Queue a retry of a succeeded job that has none in flight. Returns whether it did."""
        result = self.session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.succeeded,
                or_(Job.stage.is_(None), Job.stage.not_in([RETRY_QUEUED, RETRY_RUNNING])),
            )
            .values(stage=RETRY_QUEUED, cancel_requested=False, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def has_work(self, *, now: datetime) -> bool:
        """Whether a retry is waiting (or its holder's lease lapsed): a cheap read."""
        return bool(self.session.scalar(select(exists().where(_claimable(now)))))

    def claim(
        self, *, owner: str, now: datetime, lease_seconds: float, job_id: str | None = None
    ) -> Lease | None:
        """Take a waiting retry (the named one, or the longest waiting) in one UPDATE."""
        condition = _claimable(now)
        if job_id is not None:
            target: Any = job_id
        else:
            target = (
                select(Job.id)
                .where(condition)
                .order_by(Job.updated_at, Job.id)
                .limit(1)
                .with_for_update(skip_locked=True)
                .scalar_subquery()
            )
        result = self.session.execute(
            update(Job)
            .where(Job.id == target, condition)
            .values(
                stage=RETRY_RUNNING,
                lease_owner=owner,
                lease_expires_at=now + timedelta(seconds=lease_seconds),
                lease_token=Job.lease_token + 1,
                last_worker=owner,
                updated_at=now,
            )
            .returning(Job.id, Job.lease_token)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        return None if row is None else Lease(row[0], owner, row[1])

    def heartbeat(self, lease: Lease, *, now: datetime, lease_seconds: float) -> tuple[bool, bool]:
        """Renew the retry's lease. Returns ``(held, cancel_requested)``."""
        row = self.session.execute(
            update(Job)
            .where(_held(lease))
            .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        ).first()
        return (False, False) if row is None else (True, bool(row[0]))

    def finish(
        self, lease: Lease, *, now: datetime, registry: dict[str, Any] | None, requeue: bool = False
    ) -> bool:
        """End the retry under its lease: write ``result.registry`` (None keeps it), or with
        ``requeue`` give it back to the queue (this worker is stopping)."""
        values: dict[str, Any] = {
            "stage": RETRY_QUEUED if requeue else None,
            "lease_owner": None,
            "lease_expires_at": None,
            "cancel_requested": False,
            "updated_at": now,
        }
        if registry is not None:
            current = self.session.scalar(select(Job.result).where(Job.id == lease.job_id))
            values["result"] = {**(current or {}), "registry": registry}
        result = self.session.execute(
            update(Job)
            .where(_held(lease))
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def cancel(self, job_id: str, *, now: datetime) -> bool:
        """Cancel the job's retry: a waiting one at once, a running one at its holder's next
        tick. Returns False when the job has no retry in flight."""
        dropped = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.succeeded, Job.stage == RETRY_QUEUED)
            .values(stage=None, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if dropped.rowcount:  # type: ignore[attr-defined]
            return True
        asked = self.session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.succeeded, Job.stage == RETRY_RUNNING)
            .values(cancel_requested=True, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(asked.rowcount)  # type: ignore[attr-defined]
