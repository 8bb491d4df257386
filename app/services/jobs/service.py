"""Job use cases: create (validated), read, cancel, artifacts."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import TERMINAL_STATUSES, Artifact, Checkpoint, Job
from app.db.repositories import (
    ArtifactRepository,
    CheckpointRepository,
    JobRepository,
    RegistrationRepository,
)
from app.engine.errors import InvalidRecipeError
from app.engine.target_spec import TargetSpec
from app.net.outbound import OutboundPolicy
from app.services.errors import ConflictError, InvalidJobError, NotFoundError, TooManyJobsError
from app.services.jobs.events import record_status
from app.services.jobs.reference import ReferenceSpec
from app.services.sources.references import (
    RegisterSpec,
    RegistryConfig,
    SourceRef,
    check_register,
    check_source_ref,
)
from app.services.webhooks.outbox import check_callback_host, check_callback_secret
from app.storage import BlobStore

__all__ = [
    "ACTIVE_JOBS_RETRY_AFTER",
    "CheckedJob",
    "JobHooks",
    "JobRequest",
    "cancel_job",
    "check_active_jobs",
    "check_job",
    "check_job_callback",
    "check_target",
    "create_job",
    "find_target_checkpoints",
    "get_artifact",
    "get_job",
    "list_jobs",
    "read_report",
    "validate_recipe",
]

# Seconds a client over its active-job cap is told to wait: about one small job's run.
ACTIVE_JOBS_RETRY_AFTER = 30


def validate_recipe(recipe: dict[str, Any] | str | None) -> dict[str, Any] | None:
    """Check a recipe with the engine's own model (pure validation, no files, no torch).

    Args:
        recipe: the recipe document, ``builtin:NAME`` (a built-in recipe, SPEC §2.2), or None.

    Returns:
        The document to keep: the given one, or the built-in's, normalised.

    Raises:
        InvalidRecipeError: naming the rule, e.g. ``rename[3]``; an unknown built-in.
    """
    from app.engine.recipe import load_recipe

    if isinstance(recipe, str) and not recipe.startswith("builtin:"):
        raise InvalidRecipeError("a recipe is a mapping, or builtin:NAME (GET /v1/recipes)")
    loaded = load_recipe(recipe)
    return loaded.model_dump(mode="json") if isinstance(recipe, str) else recipe


def find_target_checkpoints(
    checkpoints: CheckpointRepository, target: TargetSpec, *, owner: str | None
) -> list[Checkpoint]:
    """The checkpoints a (checked) target spec names (``owner``'s, unless None).

    Raises:
        InvalidJobError: an unknown (or another owner's) checkpoint.
    """
    found = []
    for ref in target.checkpoint_refs():
        checkpoint = checkpoints.get(ref, owner=owner)
        if checkpoint is None:
            raise InvalidJobError(f"target.checkpoint: no checkpoint with id {ref!r}")
        found.append(checkpoint)
    return found


def check_target(
    checkpoints: CheckpointRepository, target: TargetSpec, *, owner: str | None
) -> list[Checkpoint]:
    """Check a target spec and find the checkpoints it names (``owner``'s, unless None).

    Raises:
        InvalidTargetError: naming the skeleton entry.
        InvalidJobError: an unknown (or another owner's) checkpoint.
    """
    target.check()
    return find_target_checkpoints(checkpoints, target, owner=owner)


@dataclass(frozen=True)
class JobRequest:
    """One conversion to queue, as the API or a pipeline asks for it.

    Attributes:
        source: an uploaded checkpoint's id, or a reference the worker fetches (None with
            ``sources``).
        target: the target spec, stored whole on the job.
        recipe: the recipe document, or ``builtin:NAME`` (None: the default recipe).
        output_format: ``safetensors`` or ``torch``.
        output_dtype: the output dtype over the recipe's, if any.
        dry_run: plan and report only.
        owner: who the job belongs to.
        checkpoint_owner: whose checkpoints it may name (None: anyone's, for admins).
        register: register the result in MLflow after success.
        pipeline_id: the pipeline that started the job.
        device: ``auto``, ``cpu`` or ``cuda``: where it asks to run (routing).
        reference: the parity reference (SPEC §3.2), registered architectures only.
        sources: several uploaded checkpoints' ids by name, in place of ``source``.
        output_folder: write the weights as a model folder (published zipped).
    """

    source: str | SourceRef | None
    target: TargetSpec
    recipe: dict[str, Any] | str | None
    output_format: Literal["safetensors", "torch", "dcp"]
    output_dtype: str | None
    dry_run: bool
    owner: str
    checkpoint_owner: str | None = None
    register: RegisterSpec | None = None
    pipeline_id: str | None = None
    device: str = "auto"
    reference: ReferenceSpec | None = None
    sources: dict[str, str] | None = None
    output_folder: bool = False


@dataclass(frozen=True)
class CheckedJob:
    """A :class:`JobRequest` whose recipe, target, source and register passed
    :func:`check_job`; only this goes into :func:`create_job`'s transaction.

    Attributes:
        request: the request, unchanged.
        recipe: the recipe document to keep (a ``builtin:NAME`` resolved to its document).
    """

    request: JobRequest
    recipe: dict[str, Any] | None = None


def check_job(request: JobRequest, *, registry: RegistryConfig | None = None) -> CheckedJob:
    """Everything about a job that needs no database: call it outside any transaction, in a
    worker thread (compiling a recipe's regexes is CPU work; SPEC §5.3, no work under the
    write lock).

    Args:
        request: what to convert, for whom.
        registry: the configured registry and outbound allow list (for references).

    Raises:
        InvalidJobError: a reference or register request that cannot work (reserved alias,
            no registry configured).
        OutboundRefusedError: a source host the allow list does not admit (nothing connected).
        InvalidRecipeError: from the engine, naming the rule.
        InvalidTargetError: from the engine, naming the skeleton entry.
    """
    registry = registry or RegistryConfig()
    if isinstance(request.source, SourceRef):
        check_source_ref(request.source, registry)
    if request.register is not None:
        check_register(request.register, registry, dry_run=request.dry_run)
    recipe = validate_recipe(request.recipe)
    _check_sources(request, recipe)
    request.target.check()
    reference = request.reference
    if (
        reference
        and reference.target_architecture is None
        and not request.target.architecture_ref()
    ):
        raise InvalidJobError(
            "reference.target_architecture: a skeleton or checkpoint target has no model of "
            "its own; name the registered architecture its weights load into"
        )
    return CheckedJob(request, recipe)


def _check_sources(request: JobRequest, recipe: dict[str, Any] | None) -> None:
    """One source, or several by name; a recipe naming sources needs those names."""
    if (request.source is None) == (request.sources is None):
        raise InvalidJobError("give `source` (one checkpoint) or `sources` (several by name)")
    named = set((recipe or {}).get("sources") or {})
    given = set(request.sources or {})
    if named and named != given:
        raise InvalidJobError(
            f"sources: the recipe names {', '.join(sorted(named))}; the job gives "
            f"{', '.join(sorted(given)) or 'one unnamed source'}"
        )


def create_job(
    session: Session,
    checked: CheckedJob,
    *,
    max_attempts: int,
    max_active: int | None = None,
    hooks: JobHooks | None = None,
) -> Job:
    """Queue a checked conversion: only lookups and writes. Workers pick it up once the
    caller commits.

    Args:
        session: the unit of work; the caller commits.
        checked: what to convert, for whom, from :func:`check_job`.
        max_attempts: how many times a worker may claim it (GRAFT_MAX_ATTEMPTS).
        max_active: the owner's cap on queued + running jobs (None: no cap).
        hooks: its callback and the allow list it must pass.

    Returns:
        The queued job.

    Raises:
        InvalidJobError: an unknown (or another owner's) checkpoint.
        TooManyJobsError: the owner already has ``max_active`` queued or running jobs.
        OutboundRefusedError: a callback host off the allow list, or no signing secret.
    """
    request = checked.request
    source, register, owner = request.source, request.register, request.owner
    checkpoint_owner = request.checkpoint_owner
    checkpoints = CheckpointRepository(session)
    jobs = JobRepository(session)
    if max_active is not None:
        check_active_jobs(jobs, owner, max_active=max_active)
    named: list[tuple[str, Any]] = [(f"sources.{n}", i) for n, i in (request.sources or {}).items()]
    for where, checkpoint_id in named or [("source", source)]:
        if (
            isinstance(checkpoint_id, str)
            and checkpoints.get(checkpoint_id, owner=checkpoint_owner) is None
        ):
            raise InvalidJobError(
                f"{where}: no checkpoint with id {checkpoint_id!r}; upload it first"
            )
    templates = find_target_checkpoints(checkpoints, request.target, owner=checkpoint_owner)
    job = Job(
        owner=owner,
        source_id=source if isinstance(source, str) else None,
        source_ref=source.model_dump(exclude_none=True) if isinstance(source, SourceRef) else None,
        register=register.model_dump(exclude_none=True) if register is not None else None,
        pipeline_id=request.pipeline_id,
        target=request.target.model_dump(mode="json"),
        target_checkpoint_id=templates[0].id if templates else None,
        recipe=checked.recipe,
        reference=request.reference.model_dump(mode="json") if request.reference else None,
        output_format=request.output_format,
        output_dtype=request.output_dtype,
        output_folder=request.output_folder,
        sources=dict(request.sources) if request.sources else None,
        dry_run=request.dry_run,
        max_attempts=max_attempts,
        requested_device=request.device,
    )
    if hooks is not None and hooks.callback is not None:
        url = hooks.callback["url"]
        if not hooks.host_checked:
            check_callback_host(url, policy=hooks.outbound)
        check_callback_secret(session, url, owner, local_secret=hooks.local_secret)
        job.callback = hooks.callback
    jobs.add(job)
    record_status(session, job)
    return job


def check_active_jobs(jobs: JobRepository, owner: str, *, max_active: int) -> None:
    """Refuse a job beyond the owner's cap on queued + running jobs (SPEC §5.3).

    Raises:
        TooManyJobsError: 429 with ``Retry-After``.
    """
    active = jobs.count_active(owner)
    if active >= max_active:
        raise TooManyJobsError(
            f"owner {owner!r} has {active} queued or running jobs, the most allowed "
            f"(GRAFT_MAX_ACTIVE_JOBS_PER_OWNER={max_active}); retry when some have finished",
            headers={"Retry-After": str(ACTIVE_JOBS_RETRY_AFTER)},
            limit=max_active,
        )


@dataclass(frozen=True)
class JobHooks:
    """What a job tells the outside world: its webhook and its status events.

    Attributes:
        outbound: the allow list the callback URL must pass.
        local_secret: GRAFT_WEBHOOK_SECRET (owner ``local``'s, unless one is stored).
        callback: ``{"url", "events"}``, or None.
        host_checked: the callback's host was checked against ``outbound`` already, before
            the write transaction (the API does; :func:`check_job_callback`).
    """

    outbound: OutboundPolicy
    local_secret: str | None = None
    callback: dict[str, Any] | None = None
    host_checked: bool = False


def check_job_callback(hooks: JobHooks) -> JobHooks:
    """Check the callback's host before any transaction is open (SPEC §5.3: no work under
    the write lock); the owner's signing secret is checked in :func:`create_job`.

    Returns:
        ``hooks``, marked checked.

    Raises:
        OutboundRefusedError: the host is not allowed.
    """
    if hooks.callback is not None:
        check_callback_host(hooks.callback["url"], policy=hooks.outbound)
    return dataclasses.replace(hooks, host_checked=True)


def get_job(session: Session, job_id: str, *, owner: str | None) -> Job:
    """One job; another owner's answers as if it did not exist."""
    job = JobRepository(session).get(job_id, owner=owner)
    if job is None:
        raise NotFoundError(f"no job with id {job_id!r}")
    return job


def list_jobs(
    session: Session, *, offset: int, limit: int, status: str | None, owner: str | None
) -> tuple[list[Job], int]:
    return JobRepository(session).page(offset=offset, limit=limit, status=status, owner=owner)


def cancel_job(session: Session, job_id: str, *, owner: str | None) -> Job:
    """Cancel a queued job now, or ask the worker running it to stop.

    A queued job's ``cancelled`` status event (and webhook) is recorded here; a running
    job's by its worker when it stops. A succeeded job with a registration retry in flight
    has that retry cancelled (the job stays succeeded, ``result.registry`` as it was).

    Raises:
        ConflictError: the job already finished (and has no registration retry in flight).
    """
    repo = JobRepository(session)
    job = get_job(session, job_id, owner=owner)
    if RegistrationRepository(session).cancel(job_id, now=utcnow()):
        session.refresh(job)
        return job
    if job.status in TERMINAL_STATUSES:
        raise ConflictError(f"job {job_id} already {job.status}; nothing to cancel")
    now = utcnow()
    cancelled = repo.cancel_queued(job_id, now=now)
    if not cancelled and not repo.request_cancel(job_id, now=now):
        session.refresh(job)  # it finished meanwhile (a worker, or the reaper)
        raise ConflictError(f"job {job_id} already {job.status}; nothing to cancel")
    session.refresh(job)
    if cancelled:
        record_status(session, job)
    return job


def get_artifact(session: Session, job_id: str, name: str, *, owner: str | None) -> Artifact:
    """One published artifact of a job.

    Raises:
        NotFoundError: no such job, or the job has not produced it (yet).
    """
    job = get_job(session, job_id, owner=owner)
    artifact = ArtifactRepository(session).get(job_id, name)
    if artifact is None:
        hint = (
            f"job {job_id} is {job.status}"
            if job.status not in TERMINAL_STATUSES
            else f"job {job_id} ({job.status}) produced no {name}"
        )
        raise NotFoundError(f"no {name} artifact: {hint}")
    return artifact


def read_report(session: Session, store: BlobStore, job_id: str, *, owner: str | None) -> Any:
    """A job's report, parsed (reports are small beside weights: a few MB at most).

    Raises:
        NotFoundError: no such job, or no report yet.
    """
    artifact = get_artifact(session, job_id, "report", owner=owner)
    data = b"".join(store.iter_range(artifact.sha256, 0, artifact.size))
    return json.loads(data)
