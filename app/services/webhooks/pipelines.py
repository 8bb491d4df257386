"""Pipelines: named, stored automations that start a job when a registry event matches.

A pipeline says which MLflow model it watches (``trigger``), and what job to run for each new
version of it (``target``, ``recipe``, ``output``). Names are unique per owner. A pipeline
that would register its result into the very model it watches is refused: each result would
trigger it again, forever.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import Pipeline
from app.db.repositories import CheckpointRepository, PipelineRepository
from app.engine.target_spec import TargetSpec
from app.services.errors import ConflictError, InvalidJobError, NotFoundError
from app.services.jobs.service import find_target_checkpoints, validate_recipe
from app.services.sources.references import RegisterSpec, RegistryConfig, check_register
from app.services.webhooks.outbox import Callback, check_callback_host, check_callback_secret

__all__ = [
    "PipelineOutput",
    "PipelineSpec",
    "PipelineTrigger",
    "check_pipeline",
    "create_pipeline",
    "delete_pipeline",
    "get_pipeline",
    "list_pipelines",
    "replace_pipeline",
]


class PipelineTrigger(BaseModel):
    """The registry event a pipeline reacts to."""

    model_config = ConfigDict(extra="forbid")

    registry: Literal["mlflow"] = "mlflow"
    model: str = Field(min_length=1, max_length=255, description="the registered model watched")
    on: str = Field(
        default="model_version_created",
        pattern=r"^(model_version_created|alias:[^/@\s]{1,255})$",
        description="model_version_created, or alias:ALIAS (the alias was set on a version)",
    )


class PipelineOutput(BaseModel):
    # ``register`` is spelled through an alias: as a field name it would shadow
    # ``BaseModel.register`` (the ABC method).
    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)

    format: Literal["safetensors", "torch"] = "safetensors"
    dtype: Literal["float32", "float16", "bfloat16"] | None = None
    registration: RegisterSpec | None = Field(default=None, alias="register")


class PipelineSpec(BaseModel):
    """A pipeline as created or replaced (SPEC §5.1)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    trigger: PipelineTrigger
    target: TargetSpec
    recipe: dict[str, Any] | None = None
    output: PipelineOutput = Field(default_factory=PipelineOutput)
    callback: Callback | None = Field(
        default=None,
        description="{url, events}: each job the pipeline starts sends its signed webhooks there",
    )


def check_pipeline(spec: PipelineSpec, *, registry: RegistryConfig) -> None:
    """Everything about a pipeline that needs no database: call it outside any transaction,
    in a worker thread (compiling its recipe is CPU work; SPEC §5.3).

    Raises:
        InvalidJobError: it registers into its own trigger model, or needs a registry that is
            not configured.
        InvalidRecipeError, InvalidTargetError: from the engine.
        OutboundRefusedError: a callback host the allow list refuses.
    """
    register = spec.output.registration
    if register is not None and register.name == spec.trigger.model:
        raise InvalidJobError(
            f"output.register.name {register.name!r} is the pipeline's own trigger model: "
            "each result would start the pipeline again; register into another model"
        )
    validate_recipe(spec.recipe)
    spec.target.check()
    if register is not None:
        check_register(register, registry, dry_run=False)
    registry.require_mlflow("a pipeline's trigger")
    if spec.callback is not None:  # the same host check a job's callback gets, not at each event
        check_callback_host(spec.callback.url, policy=registry.policy())


def _check_stored(
    session: Session,
    spec: PipelineSpec,
    *,
    owner: str,
    checkpoint_owner: str | None,
    local_secret: str | None,
) -> None:
    """What a pipeline needs of the database: its checkpoints exist, and a callback has a
    signing secret to be signed with."""
    find_target_checkpoints(CheckpointRepository(session), spec.target, owner=checkpoint_owner)
    if spec.callback is not None:
        check_callback_secret(session, spec.callback.url, owner, local_secret=local_secret)


def _store(pipeline: Pipeline, spec: PipelineSpec) -> None:
    pipeline.spec = spec.model_dump(mode="json")
    pipeline.trigger_model = spec.trigger.model
    pipeline.trigger_on = spec.trigger.on
    pipeline.updated_at = utcnow()


def create_pipeline(
    session: Session,
    spec: PipelineSpec,
    *,
    owner: str,
    checkpoint_owner: str | None,
    local_secret: str | None = None,
) -> Pipeline:
    """Store a new pipeline that passed :func:`check_pipeline`: lookups and writes only.

    Raises:
        ConflictError: the owner already has a pipeline of that name.
        InvalidJobError: it names an unknown checkpoint.
        OutboundRefusedError: no signing secret for its callback (``local_secret``:
            GRAFT_WEBHOOK_SECRET, owner ``local``'s fallback).
    """
    repo = PipelineRepository(session)
    if repo.get(spec.name, owner=owner) is not None:
        raise ConflictError(f"a pipeline named {spec.name!r} exists; PUT replaces it")
    _check_stored(session, spec, owner=owner, checkpoint_owner=checkpoint_owner,
                  local_secret=local_secret)  # fmt: skip
    pipeline = Pipeline(owner=owner, name=spec.name, created_at=utcnow())
    _store(pipeline, spec)
    try:
        with session.begin_nested():
            repo.add(pipeline)
    except IntegrityError as exc:  # a concurrent create of the same name won
        raise ConflictError(f"a pipeline named {spec.name!r} exists; PUT replaces it") from exc
    return pipeline


def replace_pipeline(
    session: Session,
    name: str,
    spec: PipelineSpec,
    *,
    owner: str,
    checkpoint_owner: str | None,
    local_secret: str | None = None,
) -> Pipeline:
    """Replace a pipeline's definition (its name stays) with one that passed
    :func:`check_pipeline`.

    Raises:
        NotFoundError: no such pipeline of this owner.
        InvalidJobError: the body names another pipeline, or an unknown checkpoint.
    """
    pipeline = get_pipeline(session, name, owner=owner)
    if spec.name != name:
        raise InvalidJobError(f"name {spec.name!r} differs from the pipeline replaced ({name!r})")
    _check_stored(session, spec, owner=owner, checkpoint_owner=checkpoint_owner,
                  local_secret=local_secret)  # fmt: skip
    _store(pipeline, spec)
    session.flush()
    return pipeline


def get_pipeline(session: Session, name: str, *, owner: str) -> Pipeline:
    pipeline = PipelineRepository(session).get(name, owner=owner)
    if pipeline is None:
        raise NotFoundError(f"no pipeline named {name!r}")
    return pipeline


def list_pipelines(
    session: Session, *, offset: int, limit: int, owner: str | None
) -> tuple[list[Pipeline], int]:
    return PipelineRepository(session).page(offset=offset, limit=limit, owner=owner)


def delete_pipeline(session: Session, name: str, *, owner: str) -> None:
    """Delete a pipeline; jobs it started stay (their ``pipeline`` becomes null)."""
    PipelineRepository(session).delete(get_pipeline(session, name, owner=owner))
