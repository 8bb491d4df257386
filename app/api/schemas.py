"""Request and response bodies. Separate from the SQLAlchemy models on purpose."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import Artifact, Checkpoint, Job, Pipeline
from app.engine.target_spec import TargetSpec, parse_target_spec
from app.services.pipelines import PipelineSpec
from app.services.references import RegisterSpec, SourceRef

__all__ = [
    "ArchitecturePublic",
    "ArchitecturesPublic",
    "ArtifactPublic",
    "ArtifactsPublic",
    "Callback",
    "CheckpointPublic",
    "CheckpointsPublic",
    "DeliveriesPublic",
    "DeliveryPublic",
    "JobCreate",
    "JobPublic",
    "JobsPublic",
    "PipelinePublic",
    "PipelinesPublic",
    "TensorPublic",
    "TensorsPublic",
    "WebhookSecretPublic",
    "job_document",
]


class FilePublic(BaseModel):
    filename: str
    sha256: str
    size: int


class CheckpointPublic(BaseModel):
    id: str
    sha256: str
    filename: str
    size: int
    format: str
    entry: str | None
    stripped_prefix: str | None
    tensors: int
    elements: int
    bytes: int
    by_dtype: dict[str, Any]
    files: list[FilePublic]
    created_at: datetime

    @classmethod
    def of(cls, checkpoint: Checkpoint) -> CheckpointPublic:
        return cls(
            id=checkpoint.id,
            sha256=checkpoint.sha256,
            filename=checkpoint.filename,
            size=checkpoint.size,
            format=checkpoint.format,
            entry=checkpoint.entry,
            stripped_prefix=checkpoint.stripped_prefix,
            tensors=checkpoint.tensors,
            elements=checkpoint.elements,
            bytes=checkpoint.bytes,
            by_dtype=checkpoint.by_dtype,
            files=[
                FilePublic(filename=f.filename, sha256=f.sha256, size=f.size)
                for f in checkpoint.files
            ],
            created_at=checkpoint.created_at,
        )


class CheckpointsPublic(BaseModel):
    data: list[CheckpointPublic]
    count: int


class TensorPublic(BaseModel):
    key: str
    shape: list[int]
    dtype: str
    kind: str


class TensorsPublic(BaseModel):
    data: list[TensorPublic]
    count: int


class OutputOptions(BaseModel):
    # ``register`` is spelled through an alias: as a field name it would shadow
    # ``BaseModel.register`` (the ABC method).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    format: Literal["safetensors", "torch"] = "safetensors"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    registration: RegisterSpec | None = Field(
        default=None,
        alias="register",
        description="after success, register the result as an MLflow version",
    )


WebhookEvent = Literal["succeeded", "failed", "cancelled"]
_ALL_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "cancelled")


class Callback(BaseModel):
    """Where to send the job's completion webhooks, and for which statuses."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000, description="https URL (allow-listed host)")
    events: list[WebhookEvent] = Field(default_factory=lambda: list(_ALL_EVENTS), min_length=1)


class JobCreate(BaseModel):
    """A conversion request (SPEC §5)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "source": "3f2c0c4a9b8d4e6f8a1b2c3d4e5f6a7b",
                    "target": {"checkpoint": "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d"},
                    "recipe": {
                        "version": 1,
                        "rename": [{"prefix": "backbone.", "to": "encoder."}],
                        "drop": ["fc.*"],
                    },
                    "output": {"format": "safetensors", "dtype": None},
                    "dry_run": False,
                }
            ]
        },
    )

    source: str | SourceRef = Field(
        description='id of an uploaded checkpoint, or {"uri": "models:/NAME/VERSION" | '
        '"models:/NAME@ALIAS" | "https://…"} fetched by the worker'
    )
    target: TargetSpec
    recipe: dict[str, Any] | None = Field(default=None, description="a version 1 recipe (SPEC §2)")
    output: OutputOptions = Field(default_factory=OutputOptions)
    dry_run: bool = Field(default=False, description="produce the report only, no weights")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto",
        description="where to run: cuda -> a GPU worker, cpu -> a CPU worker, auto -> a GPU "
        "worker when one is alive (Celery executor; the local workers use GRAFT_DEVICE)",
    )
    callback: Callback | None = Field(
        default=None, description="a signed webhook (Standard Webhooks) when the job finishes"
    )


class JobError(BaseModel):
    type: str
    message: str | None


class RegistryResult(BaseModel):
    uri: str
    version: str


class JobResult(BaseModel):
    registry: RegistryResult | None = None
    source_version: str | None = Field(
        default=None, description="the model version a models:/ source resolved to"
    )


class JobTimings(BaseModel):
    queued_s: float | None
    run_s: float | None


class JobPublic(BaseModel):
    id: str
    status: str
    stage: str | None
    progress: float
    ok: bool | None
    source: str | None = Field(description="the source checkpoint's id (once fetched, for a uri)")
    source_ref: SourceRef | None = None
    target: dict[str, Any]
    output: OutputOptions
    dry_run: bool
    attempts: int
    worker: str | None
    device: str | None
    warnings: list[str] = Field(
        default_factory=list, description="the report's warnings (nothing_loaded, unmatched: …)"
    )
    requested_device: str
    queue: str | None
    error: JobError | None
    result: JobResult | None = None
    pipeline: str | None = Field(default=None, description="the pipeline that started it")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: JobTimings
    callback: dict[str, Any] | None = None
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job) -> JobPublic:
        target = parse_target_spec(job.target).public()
        queued_s = run_s = None
        if job.started_at is not None:
            queued_s = (job.started_at - job.created_at).total_seconds()
            if job.finished_at is not None:
                run_s = (job.finished_at - job.started_at).total_seconds()
        base = f"/v1/jobs/{job.id}"
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=job.progress,
            ok=job.ok,
            source=job.source_id,
            source_ref=SourceRef.model_validate(job.source_ref) if job.source_ref else None,
            target=target,
            output=OutputOptions(
                format=job.output_format,  # type: ignore[arg-type]
                dtype=job.output_dtype,  # type: ignore[arg-type]
                register=RegisterSpec.model_validate(job.register) if job.register else None,
            ),
            dry_run=job.dry_run,
            attempts=job.attempts,
            worker=job.lease_owner,
            device=job.device,
            warnings=list(job.warnings or []),
            requested_device=job.requested_device,
            queue=job.queue,
            error=JobError(type=job.error_type, message=job.error_message)
            if job.error_type
            else None,
            result=JobResult.model_validate(job.result) if job.result else None,
            pipeline=job.pipeline_id,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            timings=JobTimings(queued_s=queued_s, run_s=run_s),
            callback=job.callback,
            links={
                "self": base,
                "report": f"{base}/report",
                "weights": f"{base}/weights",
                "manifest": f"{base}/manifest",
                "artifacts": f"{base}/artifacts",
                "events": f"{base}/events",
                "deliveries": f"{base}/deliveries",
            },
        )


def job_document(job: Job) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` shows it, as JSON data (status events, webhooks)."""
    return JobPublic.of(job).model_dump(mode="json")


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class ArtifactPublic(BaseModel):
    name: str
    filename: str
    media_type: str
    sha256: str
    size: int
    url: str

    @classmethod
    def of(cls, artifact: Artifact) -> ArtifactPublic:
        path = {"report-text": "report?format=text"}.get(artifact.name, artifact.name)
        return cls(
            name=artifact.name,
            filename=artifact.filename,
            media_type=artifact.media_type,
            sha256=artifact.sha256,
            size=artifact.size,
            url=f"/v1/jobs/{artifact.job_id}/{path}",
        )


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


class AttemptPublic(BaseModel):
    attempt: int
    at: datetime
    status_code: int | None
    error: str | None
    duration_ms: int


class DeliveryPublic(BaseModel):
    """One webhook message (``id`` is its ``webhook-id``) and its delivery attempts."""

    id: str
    event: str
    url: str
    state: Literal["pending", "delivered", "failed"]
    attempts: list[AttemptPublic]
    next_attempt_at: datetime | None
    created_at: datetime
    finished_at: datetime | None


class DeliveriesPublic(BaseModel):
    data: list[DeliveryPublic]
    count: int


class WebhookSecretPublic(BaseModel):
    secret: str = Field(description="whsec_<base64>: shown once; verify webhook-signature with it")


class ArchitectureKwarg(BaseModel):
    type: str | None = Field(description="the factory's annotation, e.g. int, int | None")
    default: Any = None
    required: bool = False


class ArchitecturePublic(BaseModel):
    name: str
    kwargs: dict[str, ArchitectureKwarg] = Field(default_factory=dict)
    description: str | None = None
    origin: str | None = Field(
        default=None, description="builtin | entry-point | setting | torchvision | timm"
    )
    available: bool = Field(
        default=True, description="false when the architecture's import failed (see error)"
    )
    error: str | None = Field(default=None, description="why it is unavailable, one line")


class ArchitecturesPublic(BaseModel):
    data: list[ArchitecturePublic]
    count: int


class PipelinePublic(PipelineSpec):
    """A stored pipeline: its definition, id and times."""

    id: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, pipeline: Pipeline) -> PipelinePublic:
        return cls.model_validate(
            {
                **pipeline.spec,
                "id": pipeline.id,
                "created_at": pipeline.created_at,
                "updated_at": pipeline.updated_at,
            }
        )


class PipelinesPublic(BaseModel):
    data: list[PipelinePublic]
    count: int
