"""Every query the service makes. Repositories flush; the caller's unit of work commits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    ACTIVE_STATUSES,
    ApiKey,
    Artifact,
    Checkpoint,
    CheckpointFile,
    CheckpointTensor,
    Job,
    JobStatus,
    MlflowDelivery,
    Pipeline,
    Worker,
)

__all__ = [
    "ApiKeyRepository",
    "ArtifactRepository",
    "CheckpointRepository",
    "DeliveryRepository",
    "JobClaim",
    "JobRepository",
    "PipelineRepository",
    "WorkerRepository",
]

# ``owner=None`` in a query means every owner: workers and admins; API callers pass theirs.


class CheckpointRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, checkpoint_id: str, *, owner: str | None = None) -> Checkpoint | None:
        checkpoint = self.session.get(Checkpoint, checkpoint_id)
        if checkpoint is None or (owner is not None and checkpoint.owner != owner):
            return None
        return checkpoint

    def get_by_sha256(self, sha256: str, *, owner: str) -> Checkpoint | None:
        return self.session.scalars(
            select(Checkpoint).where(Checkpoint.sha256 == sha256, Checkpoint.owner == owner)
        ).first()

    def add(self, checkpoint: Checkpoint, tensors: Sequence[dict[str, Any]]) -> Checkpoint:
        """Insert a checkpoint (with its files attached) and its tensor list."""
        self.session.add(checkpoint)
        self.session.flush()
        self.session.add_all(
            CheckpointTensor(
                checkpoint_id=checkpoint.id,
                position=i,
                key=t["key"],
                shape=list(t["shape"]),
                dtype=t["dtype"],
                kind=t["kind"],
            )
            for i, t in enumerate(tensors)
        )
        self.session.flush()
        return checkpoint

    def page(
        self, *, offset: int, limit: int, owner: str | None = None, sha256: str | None = None
    ) -> tuple[list[Checkpoint], int]:
        where = [Checkpoint.owner == owner] if owner is not None else []
        if sha256 is not None:
            where.append(Checkpoint.sha256 == sha256)
        count = self.session.scalar(select(func.count()).select_from(Checkpoint).where(*where)) or 0
        rows = self.session.scalars(
            select(Checkpoint)
            .where(*where)
            .order_by(Checkpoint.created_at.desc(), Checkpoint.id)
            .offset(offset)
            .limit(limit)
        )
        return list(rows), count

    def tensors(
        self, checkpoint_id: str, *, offset: int, limit: int
    ) -> tuple[list[CheckpointTensor], int]:
        where = CheckpointTensor.checkpoint_id == checkpoint_id
        count = self.session.scalar(select(func.count()).where(where)) or 0
        rows = self.session.scalars(
            select(CheckpointTensor)
            .where(where)
            .order_by(CheckpointTensor.position)
            .offset(offset)
            .limit(limit)
        )
        return list(rows), count

    def in_use(self, checkpoint_id: str) -> bool:
        """Whether a queued or running job reads this checkpoint."""
        query = select(
            exists().where(
                Job.status.in_(ACTIVE_STATUSES),
                or_(Job.source_id == checkpoint_id, Job.target_checkpoint_id == checkpoint_id),
            )
        )
        return bool(self.session.scalar(query))

    def referenced_by_any_job(self, checkpoint_id: str) -> bool:
        query = select(
            exists().where(
                or_(Job.source_id == checkpoint_id, Job.target_checkpoint_id == checkpoint_id)
            )
        )
        return bool(self.session.scalar(query))

    def blob_references(self, sha256: str) -> int:
        """How many checkpoint files and artifacts point at this blob."""
        files = self.session.scalar(select(func.count()).where(CheckpointFile.sha256 == sha256))
        artifacts = self.session.scalar(select(func.count()).where(Artifact.sha256 == sha256))
        return (files or 0) + (artifacts or 0)

    def referenced_blobs(self, candidates: Sequence[str]) -> set[str]:
        """Which of these blob digests a checkpoint file or an artifact still references."""
        wanted = list(candidates)
        files = self.session.scalars(
            select(CheckpointFile.sha256).where(CheckpointFile.sha256.in_(wanted))
        )
        artifacts = self.session.scalars(select(Artifact.sha256).where(Artifact.sha256.in_(wanted)))
        return set(files) | set(artifacts)

    def delete(self, checkpoint: Checkpoint) -> None:
        self.session.delete(checkpoint)
        self.session.flush()


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
        count = self.session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
        rows = self.session.scalars(
            select(Job)
            .where(*where)
            .order_by(Job.created_at.desc(), Job.id)
            .offset(offset)
            .limit(limit)
        )
        return list(rows), count

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
    def _claimable(now: datetime) -> ColumnElement[bool]:
        return and_(
            Job.attempts < Job.max_attempts,
            or_(
                Job.status == JobStatus.queued,
                and_(Job.status == JobStatus.running, Job.lease_expires_at < now),
            ),
        )

    def has_work(self, *, now: datetime) -> bool:
        """Whether a claim (or an expiry sweep) has anything to do; a cheap read that spares
        idle workers a write transaction every poll."""
        lapsed = and_(Job.status == JobStatus.running, Job.lease_expires_at < now)
        return bool(self.session.scalar(select(exists().where(or_(self._claimable(now), lapsed)))))

    def claim(self, *, owner: str, now: datetime, lease_seconds: float) -> str | None:
        """Take the oldest claimable job in one UPDATE. Returns its id, or None.

        Claimable: queued, or running with a lapsed lease (its worker died) and attempts
        left. The condition is repeated in the outer WHERE so that, on PostgreSQL, a
        concurrent claimer that lost the race updates nothing; SKIP LOCKED keeps them apart.
        """
        claimable = self._claimable(now)
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


class PipelineRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, name: str, *, owner: str) -> Pipeline | None:
        return self.session.scalar(
            select(Pipeline).where(Pipeline.owner == owner, Pipeline.name == name)
        )

    def add(self, pipeline: Pipeline) -> Pipeline:
        self.session.add(pipeline)
        self.session.flush()
        return pipeline

    def page(self, *, offset: int, limit: int, owner: str | None) -> tuple[list[Pipeline], int]:
        where = [Pipeline.owner == owner] if owner is not None else []
        count = self.session.scalar(select(func.count()).select_from(Pipeline).where(*where)) or 0
        rows = self.session.scalars(
            select(Pipeline).where(*where).order_by(Pipeline.name).offset(offset).limit(limit)
        )
        return list(rows), count

    def triggered_by(self, model: str) -> list[Pipeline]:
        """Every owner's pipelines whose trigger names ``model``, oldest first."""
        rows = self.session.scalars(
            select(Pipeline)
            .where(Pipeline.trigger_model == model)
            .order_by(Pipeline.created_at, Pipeline.id)
        )
        return list(rows)

    def delete(self, pipeline: Pipeline) -> None:
        self.session.delete(pipeline)
        self.session.flush()


class DeliveryRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, delivery_id: str) -> MlflowDelivery | None:
        return self.session.get(MlflowDelivery, delivery_id)

    def add(self, delivery: MlflowDelivery) -> MlflowDelivery:
        self.session.add(delivery)
        self.session.flush()
        return delivery


@dataclass(frozen=True)
class JobClaim:
    """The answer to a claim of one named job (see :meth:`JobRepository.claim_job`)."""

    kind: Literal["claimed", "busy", "gone"]
    retry_in: float = 0.0


class WorkerRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def record(self, worker: Worker) -> None:
        """Insert a worker, or refresh the one with its id."""
        self.session.merge(worker)
        self.session.flush()

    def beat(self, worker_id: str, *, now: datetime) -> bool:
        """Record a heartbeat. Returns whether the worker is recorded."""
        result = self.session.execute(
            update(Worker).where(Worker.id == worker_id).values(heartbeat_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def remove(self, worker_id: str) -> None:
        self.session.execute(delete(Worker).where(Worker.id == worker_id))

    def alive(self, *, since: datetime) -> list[Worker]:
        """Workers that heartbeated at or after ``since``."""
        return list(
            self.session.scalars(
                select(Worker).where(Worker.heartbeat_at >= since).order_by(Worker.id)
            )
        )

    def gpu_alive(self, *, since: datetime) -> bool:
        """Whether a worker with a CUDA device that consumes ``gpu`` heartbeated since."""
        return any(
            "gpu" in w.queues and any(d.startswith("cuda") for d in w.devices)
            for w in self.alive(since=since)
        )

    def prune(self, *, before: datetime) -> int:
        """Forget workers silent since ``before`` (they died without saying goodbye)."""
        result = self.session.execute(delete(Worker).where(Worker.heartbeat_at < before))
        return int(result.rowcount)  # type: ignore[attr-defined]


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        return key

    def get(self, key_id: str) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def active(self, key_id: str) -> ApiKey | None:
        key = self.session.get(ApiKey, key_id)
        return key if key is not None and key.revoked_at is None else None

    def any_active(self) -> bool:
        return bool(self.session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))

    def any_ever(self) -> bool:
        """Whether a key was ever created: revoked keys keep their row (revoking sets
        ``revoked_at``; nothing deletes a key), so this never turns false again."""
        return bool(self.session.scalar(select(exists().where(ApiKey.id.is_not(None)))))

    def all(self) -> list[ApiKey]:
        return list(self.session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))

    def revoke(self, key_id: str, *, now: datetime) -> bool:
        result = self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]


class ArtifactRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, artifact: Artifact) -> Artifact:
        self.session.add(artifact)
        self.session.flush()
        return artifact

    def get(self, job_id: str, name: str) -> Artifact | None:
        return self.session.scalars(
            select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name)
        ).first()

    def for_job(self, job_id: str) -> list[Artifact]:
        return list(
            self.session.scalars(
                select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)
            )
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
