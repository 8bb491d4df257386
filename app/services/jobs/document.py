"""A job as clients see it: the one document ``GET /v1/jobs/{id}`` answers, status events
carry and webhooks send. Built here, in the services, so executors recording events and the
API rendering responses use the same code without executors importing the API.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.db.models import Job
from app.engine.target_spec import parse_target_spec
from app.services.jobs.reference import ReferenceSpec
from app.services.sources.references import RegisterSpec, SourceRef

__all__ = [
    "JobCoverage",
    "JobError",
    "JobPublic",
    "JobResult",
    "JobTimings",
    "OutputOptions",
    "job_document",
]


class OutputOptions(BaseModel):
    # ``register`` is spelled through an alias: as a field name it would shadow
    # ``BaseModel.register`` (the ABC method).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)
    format: Literal["safetensors", "torch", "dcp"] = Field(
        default="safetensors",
        description="dcp: a torch.distributed.checkpoint folder (published zipped)",
    )
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    folder: bool = Field(
        default=False,
        description="a model folder as save_pretrained writes it (model.safetensors and "
        "config.json where the target declares one), published as a zip",
    )
    registration: RegisterSpec | None = Field(
        default=None,
        alias="register",
        description="after success, register the result as an MLflow version",
    )


class JobError(BaseModel):
    type: str
    message: str | None


class RegistryFailure(BaseModel):
    type: str = Field(description="a problem type, e.g. registry-unavailable")
    message: str


class RegistryResult(BaseModel):
    """Where the result was registered; or, when the registry failed after the conversion
    succeeded, ``error`` alone (the job still succeeded, its artifacts are published)."""

    uri: str | None = None
    version: str | None = None
    error: RegistryFailure | None = None


class JobResult(BaseModel):
    registry: RegistryResult | None = None
    source_version: str | None = Field(
        default=None, description="the model version a models:/ source resolved to"
    )


class JobTimings(BaseModel):
    queued_s: float | None
    run_s: float | None


class JobCoverage(BaseModel):
    """How much of the target the source fed (the report's ``summary.coverage``)."""

    tensors: float
    elements: float


class JobPublic(BaseModel):
    id: str
    status: str
    stage: str | None
    progress: float
    ok: bool | None
    source: str | None = Field(description="the source checkpoint's id (once fetched, for a uri)")
    source_ref: SourceRef | None = None
    sources: dict[str, str] | None = Field(
        default=None, description="several source checkpoints by name (keys `NAME:KEY`)"
    )
    target: dict[str, Any]
    recipe: dict[str, Any] | None = Field(default=None, description="the recipe as submitted")
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
    reference: ReferenceSpec | None = Field(
        default=None, description="the parity reference (SPEC §3.2), when the job has one"
    )
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    timings: JobTimings
    duration_seconds: float | None = Field(
        default=None, description="from start to finish (null until it finished)"
    )
    coverage: JobCoverage | None = Field(
        default=None, description="the report's coverage, once the job wrote a report"
    )
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
        stored = dict(job.result or {})
        coverage = stored.pop("coverage", None)
        return cls(
            id=job.id,
            status=job.status,
            stage=job.stage,
            progress=job.progress,
            ok=job.ok,
            source=job.source_id,
            source_ref=SourceRef.model_validate(job.source_ref) if job.source_ref else None,
            sources=job.sources,
            target=target,
            recipe=job.recipe,
            output=OutputOptions(
                format=job.output_format,  # type: ignore[arg-type]
                dtype=job.output_dtype,  # type: ignore[arg-type]
                folder=job.output_folder,
                register=RegisterSpec.model_validate(job.register) if job.register else None,
            ),
            dry_run=job.dry_run,
            attempts=job.attempts,
            worker=job.lease_owner or job.last_worker,  # who runs it, or who ran it last
            device=job.device,
            warnings=list(job.warnings or []),
            requested_device=job.requested_device,
            queue=job.queue,
            error=JobError(type=job.error_type, message=job.error_message)
            if job.error_type
            else None,
            result=JobResult.model_validate(stored) if stored else None,
            pipeline=job.pipeline_id,
            reference=ReferenceSpec.model_validate(job.reference) if job.reference else None,
            created_at=job.created_at,
            started_at=job.started_at,
            finished_at=job.finished_at,
            timings=JobTimings(queued_s=queued_s, run_s=run_s),
            duration_seconds=run_s,
            coverage=JobCoverage.model_validate(coverage) if coverage else None,
            callback=job.callback,
            links={
                "self": base,
                "report": f"{base}/report",
                "weights": f"{base}/weights",
                "manifest": f"{base}/manifest",
                "attestation": f"{base}/attestation",
                "artifacts": f"{base}/artifacts",
                "events": f"{base}/events",
                "deliveries": f"{base}/deliveries",
            },
        )


def job_document(job: Job) -> dict[str, Any]:
    """The job as ``GET /v1/jobs/{id}`` shows it, as JSON data (status events, webhooks)."""
    return JobPublic.of(job).model_dump(mode="json")
