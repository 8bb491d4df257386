"""The service's tables: checkpoints (with their files and tensors), jobs, artifacts, and
what flows out of a job: its events (SSE), its webhooks (the outbox), idempotent requests."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from app.db.base import Base, UTCDateTime, new_id, utcnow

__all__ = [
    "ACTIVE_STATUSES",
    "DEVICES",
    "LOCAL_OWNER",
    "TERMINAL_STATUSES",
    "ApiKey",
    "Artifact",
    "Checkpoint",
    "CheckpointFile",
    "CheckpointTensorPage",
    "IdempotencyRecord",
    "Job",
    "JobEvent",
    "JobStatus",
    "MlflowDelivery",
    "Pipeline",
    "WebhookAttempt",
    "WebhookDelivery",
    "WebhookSecret",
    "Worker",
]


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


ACTIVE_STATUSES = (JobStatus.queued, JobStatus.running)
TERMINAL_STATUSES = (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled)


# What a job may ask to run on (SPEC §5): ``auto`` goes to a GPU worker when one is alive.
DEVICES = ("auto", "cpu", "cuda")


# Who owns what was made with no API keys configured (the loopback-only default).
LOCAL_OWNER = "local"


class ApiKey(Base):
    """A bearer key: only the sha256 of its secret is stored; the token is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # public part of the token
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str | None] = mapped_column(String(255))
    scopes: Mapped[list[str]] = mapped_column(JSON)
    secret_sha256: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Checkpoint(Base):
    """An uploaded, inspected source or template: one file or one sharded set."""

    __tablename__ = "checkpoints"
    # Deduplicated per owner: the same bytes uploaded by two owners are two records (one
    # blob), so an upload never reveals or hands over another owner's record.
    __table_args__ = (UniqueConstraint("owner", "sha256"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(
        String(64), default=LOCAL_OWNER, server_default=LOCAL_OWNER, index=True
    )
    # A single file's sha256; for a sharded set, the sha256 of its sorted "name sha" lines.
    sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(BigInteger)
    format: Mapped[str] = mapped_column(String(32))
    entry: Mapped[str | None] = mapped_column(String(255))
    stripped_prefix: Mapped[str | None] = mapped_column(String(255))
    tensors: Mapped[int] = mapped_column(Integer)
    elements: Mapped[int] = mapped_column(BigInteger)
    bytes: Mapped[int] = mapped_column(BigInteger)
    by_dtype: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    ignored: Mapped[list[Any]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    files: Mapped[list[CheckpointFile]] = relationship(
        back_populates="checkpoint",
        order_by="CheckpointFile.position",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class CheckpointFile(Base):
    """One stored blob of a checkpoint, under the name it was uploaded with."""

    __tablename__ = "checkpoint_files"
    __table_args__ = (UniqueConstraint("checkpoint_id", "filename"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    size: Mapped[int] = mapped_column(BigInteger)

    checkpoint: Mapped[Checkpoint] = relationship(back_populates="files")


class CheckpointTensorPage(Base):
    """Up to ``TENSOR_PAGE`` consecutive tensors of a checkpoint as inspection described them
    (no data), as one compact record: a 200,000-tensor index is 200 rows, written in
    milliseconds under the write lock (SPEC §5.3)."""

    __tablename__ = "checkpoint_tensor_pages"

    checkpoint_id: Mapped[str] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="CASCADE"), primary_key=True
    )
    # The position of the page's first tensor in the checkpoint.
    start: Mapped[int] = mapped_column(Integer, primary_key=True)
    # JSON: ``[[key, shape, dtype, kind], ...]``, serialised before the transaction begins.
    tensors: Mapped[str] = mapped_column(Text)


class Job(Base):
    """A conversion request and its life: queued -> running -> succeeded | failed | cancelled."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_created_at", "status", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(
        String(64), default=LOCAL_OWNER, server_default=LOCAL_OWNER, index=True
    )
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.queued)
    stage: Mapped[str | None] = mapped_column(String(32))
    progress: Mapped[float] = mapped_column(Float, default=0.0)

    # SET NULL: deleting a checkpoint (refused while active jobs use it) keeps job history.
    source_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True
    )
    # The target spec, whole ({"checkpoint": id} | {"skeleton": {...}} | {"architecture": ...});
    # a checkpoint target's id is also a foreign key, for deletion checks and blob collection.
    target: Mapped[dict[str, Any]] = mapped_column(JSON)
    target_checkpoint_id: Mapped[str | None] = mapped_column(
        ForeignKey("checkpoints.id", ondelete="SET NULL"), index=True
    )
    recipe: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    output_format: Mapped[str] = mapped_column(String(16), default="safetensors")
    output_dtype: Mapped[str | None] = mapped_column(String(16))
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    # A source by reference ({"uri", "path"}); the worker fetches it and sets source_id.
    source_ref: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # output.register as asked ({"registry", "name", "alias", "tags"}), and what came of it
    # ({"registry": {"uri", "version"}}, plus the fetched source's resolved version).
    register: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # The parity reference (SPEC §3.2): {"architecture", "kwargs", ...}, registered only.
    reference: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Several uploaded sources by name ({"a": checkpoint id, ...}), in place of source_id.
    sources: Mapped[dict[str, str] | None] = mapped_column(JSON)
    # output.folder: the weights as a model folder (config.json beside), published zipped.
    output_folder: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    pipeline_id: Mapped[str | None] = mapped_column(
        ForeignKey("pipelines.id", ondelete="SET NULL"), index=True
    )

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # The fencing token: each claim increments it, and a holder's heartbeat, progress and
    # finish carry it; the database refuses a stale one, so a holder taken over (thought dead,
    # only paused) can no longer write.
    lease_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    device: Mapped[str | None] = mapped_column(String(16))
    # Routing (the Celery executor): what the job asked for, the queue it was sent to (None
    # until it was sent), and the worker that claimed it last (kept after it finishes).
    requested_device: Mapped[str] = mapped_column(String(8), default="auto", server_default="auto")
    queue: Mapped[str | None] = mapped_column(String(16))
    last_worker: Mapped[str | None] = mapped_column(String(128))

    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    ok: Mapped[bool | None] = mapped_column(Boolean)
    # The report's warnings, so a client polling the job sees them without the report.
    warnings: Mapped[list[str] | None] = mapped_column(JSON)
    # {"url": ..., "events": [...]}: a signed webhook per listed terminal status.
    callback: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    artifacts: Mapped[list[Artifact]] = relationship(
        back_populates="job",
        order_by="Artifact.name",
        cascade="all, delete-orphan",
        passive_deletes=True,
        lazy="selectin",
    )


class Artifact(Base):
    """A published output of a job: weights, report, manifest, text report."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    filename: Mapped[str] = mapped_column(String(255))
    media_type: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    job: Mapped[Job] = relationship(back_populates="artifacts")


class Pipeline(Base):
    """A stored automation: a registry event on ``trigger_model`` starts a job from ``spec``."""

    __tablename__ = "pipelines"
    __table_args__ = (UniqueConstraint("owner", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128))
    # Denormalised from spec["trigger"] so that a webhook finds its pipelines by index.
    trigger_model: Mapped[str] = mapped_column(String(255), index=True)
    trigger_on: Mapped[str] = mapped_column(String(255))
    # The whole pipeline as created: name, trigger, target, recipe, output, callback.
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class MlflowDelivery(Base):
    """An MLflow webhook delivery already acted on: a redelivery starts nothing again."""

    __tablename__ = "mlflow_deliveries"

    delivery_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    event: Mapped[str] = mapped_column(String(64))
    jobs: Mapped[list[str]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Worker(Base):
    """A worker process that recorded itself: its queues, its devices and its last heartbeat.

    ``auto`` jobs are routed to the ``gpu`` queue only while some worker with a CUDA device
    has heartbeated recently (SPEC §6).
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    executor: Mapped[str] = mapped_column(String(16))
    queues: Mapped[list[str]] = mapped_column(JSON)
    devices: Mapped[list[str]] = mapped_column(JSON)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class JobEvent(Base):
    """One Server-Sent Event of a job: ``progress`` or ``status``, numbered from 1 per job."""

    __tablename__ = "job_events"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    event: Mapped[str] = mapped_column(String(16))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)
    terminal: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookSecret(Base):
    """An owner's webhook signing secret (``whsec_<base64>``); rotating replaces it."""

    __tablename__ = "webhook_secrets"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    secret: Mapped[str] = mapped_column(Text)  # Fernet token (GRAFT_SECRET_KEY), never plain
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class WebhookDelivery(Base):
    """The outbox: one webhook message, written with the job's terminal status, sent until a
    2xx (``delivered``) or until it is too old (``failed``). ``id`` is the ``webhook-id``."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_state_due", "state", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    owner: Mapped[str] = mapped_column(String(64))
    url: Mapped[str] = mapped_column(Text)
    event_type: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|delivered|failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookAttempt(Base):
    """One try at delivering a webhook, as ``GET /v1/jobs/{id}/deliveries`` lists it."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)


class IdempotencyRecord(Base):
    """A POST made with an ``Idempotency-Key``: in flight, or its stored response."""

    __tablename__ = "idempotency_keys"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str | None] = mapped_column(String(64))  # sha256 of method, path, body
    status_code: Mapped[int | None] = mapped_column(Integer)  # None while in flight
    headers: Mapped[list[Any] | None] = mapped_column(JSON)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    # The scopes of the key that made the request: a replay needs all of them.
    scopes: Mapped[list[str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
