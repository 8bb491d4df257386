"""Queries for jobs: pages, cancellation, claims and leases, and finishing.

``owner=None`` in a query means every owner: workers and admins; API callers pass theirs.
Repositories flush; the caller's unit of work commits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, exists, func, or_, select, update
from sqlalchemy.orm import Session, aliased

from app.db.models import (
    Job,
    JobStatus,
)
from app.db.repositories._page import page
from app.engine.errors import DeviceUnavailableError

__all__ = ["JobClaim", "JobEnd", "JobRepository", "Lease"]


@dataclass(frozen=True)
class JobEnd:
    """How a job ended, as :meth:`JobRepository.finish` records it.

    Attributes:
        status: The terminal status.
        ok: The report's verdict, when there is a report.
        error_type: Why it failed: a problem type slug.
        error_message: Why it failed: one line.
        device: Where the conversion ran.
        source_id: The checkpoint a source by reference was recorded as.
        result: ``{"registry": {"uri", "version"}, "source_version": V}``, as far as known.
        warnings: The report's warnings (None when there is no report).
    """

    status: JobStatus
    ok: bool | None = None
    error_type: str | None = None
    error_message: str | None = None
    device: str | None = None
    source_id: str | None = None
    result: dict[str, Any] | None = None
    warnings: list[str] | None = None


@dataclass(frozen=True)
class Lease:
    """A claim of a job: who holds it, and the fencing token the claim set.

    Every write the holder makes carries the token; once another claim has incremented it,
    the database refuses them (the UPDATE matches no row).

    Attributes:
        job_id: The claimed job.
        owner: The holder's name (``host:pid:random``).
        token: The job's ``lease_token`` as this claim set it.
    """

    job_id: str
    owner: str
    token: int


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
        """Fail running jobs whose lease lapsed after their last allowed attempt, unless a
        cancel was asked: those are :meth:`cancel_abandoned`'s, even when the cancel lands
        while this runs (the condition is evaluated per row, on its latest version).

        Returns:
            Their ids (their status events and webhooks are recorded by the caller).
        """
        return self._finish_lapsed(
            now,
            and_(Job.attempts >= Job.max_attempts, Job.cancel_requested.is_(False)),
            status=JobStatus.failed,
            error_type="worker-lost",
            error_message="the worker running this job stopped (crashed or was killed) "
            "on every attempt; check the input, then submit it again",
        )

    def cancel_abandoned(self, *, now: datetime) -> list[str]:
        """Finish as cancelled the running jobs whose worker died after cancel was asked.

        Returns:
            Their ids.
        """
        return self._finish_lapsed(now, Job.cancel_requested.is_(True), status=JobStatus.cancelled)

    def _finish_lapsed(
        self, now: datetime, condition: ColumnElement[bool], **values: Any
    ) -> list[str]:
        """Finish, with ``values``, the running jobs whose lease lapsed and that match
        ``condition``; their ids."""
        result = self.session.execute(
            update(Job)
            .where(Job.status == JobStatus.running, Job.lease_expires_at < now, condition)
            .values(
                **values,
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
    def _claimable(
        now: datetime,
        job: Any = Job,
        *,
        devices: Sequence[str] | None = None,
        mlflow: bool = True,
    ) -> ColumnElement[bool]:
        """Queued, or running with a lapsed lease, with attempts left; with ``devices``, only
        jobs that asked for one of them; without ``mlflow``, not a job that needs a registry."""
        claimable = and_(
            job.attempts < job.max_attempts,
            or_(
                job.status == JobStatus.queued,
                and_(job.status == JobStatus.running, job.lease_expires_at < now),
            ),
        )
        if devices is not None:
            claimable = and_(claimable, job.requested_device.in_(list(devices)))
        return claimable if mlflow else and_(claimable, ~_needs_mlflow(job))

    def has_work(
        self, *, now: datetime, devices: Sequence[str] | None = None, mlflow: bool = True
    ) -> bool:
        """Whether a claim (or an expiry sweep) has anything to do; a cheap read that spares
        idle workers a write transaction every poll. ``devices`` as in :meth:`claim`."""
        lapsed = and_(Job.status == JobStatus.running, Job.lease_expires_at < now)
        claimable = self._claimable(now, devices=devices, mlflow=mlflow)
        return bool(self.session.scalar(select(exists().where(or_(claimable, lapsed)))))

    def count_active(self, owner: str) -> int:
        """The owner's queued and running jobs (the per-owner cap counts these)."""
        active = (JobStatus.queued, JobStatus.running)
        return int(
            self.session.scalar(
                select(func.count())
                .select_from(Job)
                .where(Job.owner == owner, Job.status.in_(active))
            )
            or 0
        )

    def claim(
        self,
        *,
        owner: str,
        now: datetime,
        lease_seconds: float,
        devices: Sequence[str] | None = None,
        mlflow: bool = True,
    ) -> Lease | None:
        """Take the next claimable job, round-robin across owners, in one UPDATE. Returns the
        lease, or None.

        Claimable: queued, or running with a lapsed lease (its worker died) and attempts
        left; with ``devices``, only jobs that asked for one of them (a worker without CUDA
        passes ``("auto", "cpu")``); for a worker without MLflow (``mlflow=False``), not a job
        that needs it (a ``models:/`` source or ``output.register``). The next owner served
        is the one with the fewest running jobs, then the one served longest ago (never
        served first); that owner's oldest claimable job is taken. So one owner's burst never
        starves another's single job (SPEC §5.3). The condition is repeated in the outer
        WHERE so that, on PostgreSQL, a concurrent claimer that lost the race updates
        nothing; SKIP LOCKED keeps them apart.
        """
        claimable = self._claimable(now, devices=devices, mlflow=mlflow)
        candidate = (
            select(Job.id)
            .where(claimable, Job.owner == _next_owner(now, devices, mlflow))
            .order_by(Job.created_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        result = self.session.execute(
            update(Job)
            .where(Job.id == candidate, claimable)
            .values(_claim_values(owner, now, lease_seconds))
            .returning(Job.id, Job.lease_token)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        return None if row is None else Lease(row[0], owner, row[1])

    def claim_job(
        self,
        job_id: str,
        *,
        owner: str,
        now: datetime,
        lease_seconds: float,
        take_over: bool = False,
    ) -> JobClaim:
        """Take one named job (a message from a broker named it), if it is claimable.

        Args:
            job_id: The job the message named.
            owner: The claimer's name.
            now: The claim time.
            lease_seconds: How long the claim lasts without a heartbeat.
            take_over: Take a running job even while its holder's lease is live (the
                holder is known gone, or the broker redelivered its message): the new
                fencing token makes whatever the old holder writes next refused.

        Returns:
            ``claimed`` with the lease; ``busy`` with the seconds until the holder's lease
            lapses (a duplicate message while the holder is alive); ``gone`` when there is
            nothing to do (finished, cancelled, unknown, or out of attempts).
        """
        claimable = self._claimable(now)
        if take_over:
            claimable = or_(
                claimable,
                and_(Job.status == JobStatus.running, Job.attempts < Job.max_attempts),
            )
        result = self.session.execute(
            update(Job)
            .where(Job.id == job_id, claimable)
            .values(_claim_values(owner, now, lease_seconds))
            .returning(Job.lease_token)
            .execution_options(synchronize_session=False)
        )
        token = result.scalar_one_or_none()
        if token is not None:
            return JobClaim("claimed", lease=Lease(job_id, owner, token))
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

    @staticmethod
    def _device_waits(before: datetime) -> ColumnElement[bool]:
        return and_(
            Job.status == JobStatus.queued,
            Job.requested_device == "cuda",
            Job.created_at < before,
        )

    def has_device_waits(self, *, before: datetime) -> bool:
        """Whether a queued ``cuda`` job was created before ``before`` (a cheap read)."""
        return bool(self.session.scalar(select(exists().where(self._device_waits(before)))))

    def fail_device_waits(self, *, now: datetime, before: datetime) -> list[str]:
        """Fail the queued ``cuda`` jobs created before ``before``: no GPU worker took them
        in time (the caller checks none is alive).

        Returns:
            Their ids (their status events and webhooks are recorded by the caller).
        """
        result = self.session.execute(
            update(Job)
            .where(self._device_waits(before))
            .values(
                status=JobStatus.failed,
                error_type=DeviceUnavailableError.type,
                error_message="the job asked for device cuda, and no GPU worker took it in "
                "time (GRAFT_DEVICE_WAIT_SECONDS); start a worker with CUDA, or submit it "
                "with device cpu or auto",
                finished_at=now,
                updated_at=now,
            )
            .returning(Job.id)
            .execution_options(synchronize_session=False)
        )
        return list(result.scalars())

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
        lease: Lease,
        *,
        now: datetime,
        lease_seconds: float,
        stage: str | None = None,
        progress: float | None = None,
    ) -> tuple[bool, bool]:
        """Renew the lease (and record progress) if ``lease`` is still the job's.

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
            .where(_held(lease))
            .values(**values)
            .returning(Job.cancel_requested)
            .execution_options(synchronize_session=False)
        )
        row = result.first()
        if row is None:
            return False, False
        return True, bool(row[0])

    def release(self, lease: Lease, *, now: datetime) -> bool:
        """Give a job back to the queue (graceful shutdown); the attempt is not counted."""
        result = self.session.execute(
            update(Job)
            .where(_held(lease))
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

    def finish(self, lease: Lease, *, now: datetime, end: JobEnd) -> bool:
        """Complete a job, only while ``lease`` is still the job's.

        Args:
            lease: The holder's claim; a stale token (another claim since) finishes nothing.
            now: The finish time.
            end: How it ended; its ``source_id`` and ``result`` are written when given.

        Returns:
            Whether the job was finished (False: the lease was lost).
        """
        extra: dict[str, Any] = {}
        if end.source_id is not None:
            extra["source_id"] = end.source_id
        if end.result is not None:
            extra["result"] = end.result
        done = self.session.execute(
            update(Job)
            .where(_held(lease))
            .values(
                status=end.status,
                ok=end.ok,
                error_type=end.error_type,
                error_message=end.error_message,
                device=end.device,
                warnings=end.warnings,
                finished_at=now,
                updated_at=now,
                progress=1.0 if end.status == JobStatus.succeeded else Job.progress,
                stage=None,
                lease_owner=None,
                lease_expires_at=None,
                **extra,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(done.rowcount)  # type: ignore[attr-defined]

    def holders(self) -> list[Lease]:
        """The leases of the running jobs (for the reaper's look at their holders)."""
        rows = self.session.execute(
            select(Job.id, Job.lease_owner, Job.lease_token).where(
                Job.status == JobStatus.running, Job.lease_owner.is_not(None)
            )
        )
        return [Lease(job_id, owner or "", token) for job_id, owner, token in rows]

    def expire(self, lease: Lease, *, now: datetime) -> bool:
        """End ``lease`` now (its holder is dead), so the next claim takes the job at once
        rather than after the lease would have lapsed. Returns whether it was still held."""
        result = self.session.execute(
            update(Job)
            .where(_held(lease))
            .values(lease_expires_at=now - timedelta(seconds=1), updated_at=now)
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class JobClaim:
    """The answer to a claim of one named job (see :meth:`JobRepository.claim_job`)."""

    kind: Literal["claimed", "busy", "gone"]
    retry_in: float = 0.0
    lease: Lease | None = None


def _held(lease: Lease) -> ColumnElement[bool]:
    """The fence: the job is running under this very claim (no claim since)."""
    return and_(
        Job.id == lease.job_id,
        Job.lease_token == lease.token,
        Job.lease_owner == lease.owner,
        Job.status == JobStatus.running,
    )


def _next_owner(now: datetime, devices: Sequence[str] | None, mlflow: bool) -> Any:
    """The owner whose turn it is among those with jobs this worker may claim: fewest running
    jobs, then least recently served (the latest start of any of its jobs; never served
    first)."""
    waiting, other = aliased(Job), aliased(Job)
    claimable = JobRepository._claimable(now, waiting, devices=devices, mlflow=mlflow)
    running = (
        select(func.count())
        .select_from(other)
        .where(other.owner == waiting.owner, other.status == JobStatus.running)
        .correlate(waiting)
        .scalar_subquery()
    )
    served = (
        select(func.max(other.started_at))
        .where(other.owner == waiting.owner)
        .correlate(waiting)
        .scalar_subquery()
    )
    return (
        select(waiting.owner)
        .where(claimable)
        .group_by(waiting.owner)
        .order_by(running, served.is_not(None), served, func.min(waiting.created_at))
        .limit(1)
        .scalar_subquery()
    )


def _needs_mlflow(job: Any = Job) -> ColumnElement[bool]:
    """A job that only a worker with an MLflow registry can run: a ``models:/`` or ``runs:/``
    source, or ``output.register`` (its ``name`` is always there). NULLs read as empty, so
    the negation is true for every other job."""
    return or_(
        func.coalesce(job.register["name"].as_string(), "") != "",
        func.coalesce(job.source_ref["uri"].as_string(), "").like("models:/%"),
        func.coalesce(job.source_ref["uri"].as_string(), "").like("runs:/%"),
    )


def _claim_values(owner: str, now: datetime, lease_seconds: float) -> dict[str, Any]:
    """What a claim writes: the lease, one more attempt, the start time (first claim only)."""
    return {
        "status": JobStatus.running,
        "lease_owner": owner,
        "lease_expires_at": now + timedelta(seconds=lease_seconds),
        "attempts": Job.attempts + 1,
        "lease_token": Job.lease_token + 1,
        "started_at": func.coalesce(Job.started_at, now),
        "updated_at": now,
        "stage": "claimed",
        "last_worker": owner,
    }
