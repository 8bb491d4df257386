"""Request and response bodies. Separate from the SQLAlchemy models on purpose."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.db.models import Artifact, Checkpoint, Pipeline
from app.engine.recipe.several import SOURCE_NAME
from app.engine.target_spec import TargetSpec
from app.services.jobs.document import JobPublic, OutputOptions, job_document
from app.services.jobs.reference import ReferenceSpec
from app.services.sources.references import SourceRef
from app.services.webhooks.outbox import Callback
from app.services.webhooks.pipelines import PipelineSpec

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


SourceName = Annotated[str, StringConstraints(pattern=SOURCE_NAME)]
CheckpointId = Annotated[str, StringConstraints(min_length=1, max_length=64)]


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


BuiltinRecipeName = Annotated[
    str, Field(pattern=r"^builtin:[A-Za-z0-9][A-Za-z0-9._-]*$", max_length=200)
]


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

    source: str | SourceRef | None = Field(
        default=None,
        description='id of an uploaded checkpoint, or {"uri": "models:/NAME/VERSION" | '
        '"models:/NAME@ALIAS" | "runs:/RUN_ID/PATH" | "https://…"} fetched by the worker',
    )
    sources: dict[SourceName, CheckpointId] | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="several uploaded checkpoints by name, in place of `source`: "
        '{"a": ID, "b": ID}; their keys read "NAME:KEY" in the recipe (docs/assembly.md)',
    )
    target: TargetSpec
    recipe: dict[str, Any] | BuiltinRecipeName | None = Field(
        default=None,
        description='a version 1 recipe (SPEC §2), or a built-in one: "builtin:NAME" '
        "(GET /v1/recipes); the job keeps the recipe itself",
    )
    reference: ReferenceSpec | None = Field(
        default=None,
        description="parity against the source's model (SPEC §3.2): registered architectures "
        "only; `parity: warn` in the recipe reports a divergence instead of failing",
    )
    recipe_text: str | None = Field(
        default=None,
        description="the recipe as YAML or JSON text instead of `recipe` (the web form sends it)",
    )
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

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.source is None) == (self.sources is None):
            raise ValueError("give `source` (one checkpoint) or `sources` (several by name)")
        if self.sources is not None and not self.sources:
            raise ValueError("`sources` names at least one checkpoint")
        return self


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
