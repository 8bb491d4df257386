"""A job's conversion: from its database row to published artifacts, for any executor.

An executor (the local lease runner, or a Celery task) claims a job, keeps its lease, and
calls :func:`execute_job`. This reads the row once, links the job's blobs into a work
folder, runs :func:`app.services.conversion.run_conversion` in a sandbox child, and
publishes what the child wrote to the blob store. The executor then completes the job with
the returned :class:`JobOutcome` (only while it still holds the lease).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, cast

from app.db.models import Checkpoint, Job, JobStatus
from app.db.repositories import CheckpointRepository, JobRepository
from app.db.session import Database
from app.engine.architectures import ArchitectureRef
from app.engine.errors import PolicyError
from app.engine.options import WriteOptions
from app.engine.progress import ProgressEvent
from app.engine.recipe import load_recipe
from app.engine.report import Report
from app.engine.target_spec import TargetSpec, parse_target_spec
from app.errors import GraftError, InternalError
from app.sandbox.runner import Limits
from app.services.checkpoints import checkpoint_files
from app.services.conversion import ConversionOutcome, ConversionRequest, run_conversion
from app.services.errors import NotFoundError
from app.services.jobs.reference import ReferenceSpec, parity_spec
from app.services.jobs.streamed import stream_refusal, streamed_upload
from app.services.plans import link_blobs
from app.services.registration import register_result
from app.services.sources.fetch import fetch_source
from app.services.sources.references import RegisterSpec, RegistryConfig, SourceRef
from app.services.stream_io import StreamSpec
from app.storage import BlobStore

__all__ = [
    "BlobSink",
    "JobControl",
    "JobOutcome",
    "JobSettings",
    "execute_job",
    "interruptible",
    "job_device",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")
_STEP_TICK_SECONDS = 0.1

_MEDIA_JSON = "application/json"
_MEDIA_TEXT = "text/plain; charset=utf-8"
_MEDIA_INTOTO = "application/vnd.in-toto+json"
_MEDIA_DSSE = "application/vnd.dsse.envelope.v1+json"
# (artifact name, file suffix, media type, file the child writes in the reports folder)
_REPORT_FILES = (
    ("report", "report.json", _MEDIA_JSON, "report.json"),
    ("report-text", "report.txt", _MEDIA_TEXT, "report.txt"),
    ("manifest", "manifest.json", _MEDIA_JSON, "manifest.json"),
)


class JobControl(Protocol):
    """How the executor keeps watch while a job runs. Any of these may raise to stop it."""

    def stage(self, name: str) -> None:
        """A stage begins (``preparing``, ``publishing``)."""
        ...

    def progress(self, event: ProgressEvent) -> None:
        """Progress within the conversion (its fraction in 0..1, counts while writing)."""
        ...

    def tick(self) -> None:
        """Called a few times a second while the conversion child runs."""
        ...


@dataclass(frozen=True)
class JobSettings:
    """What every job of one executor shares.

    Attributes:
        limits: the sandbox limits of each conversion child.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        device_index: this worker's number on its host (GPU pinning).
        architectures: more architectures, (name, module, factory) triples.
        registry: the MLflow registry and outbound allow list (sources by reference,
            ``output.register``).
        inspect_limits: the sandbox limits of a fetched source's inspection.
        max_tensors: most tensors a fetched source may hold.
        signing_key: the PEM key attestations are signed with (``GRAFT_SIGNING_KEY``).
        stream: stream jobs the store can stream (object store to object store, see
            :mod:`app.services.jobs.streamed`); off, every job takes the local path.
        stream_read_block: bytes per ranged GET of a streamed job's source.
    """

    limits: Limits
    device: str = "auto"
    device_index: int = 0
    architectures: tuple[ArchitectureRef, ...] = ()
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    inspect_limits: Limits = field(default_factory=Limits)
    max_tensors: int | None = None
    signing_key: bytes | None = field(default=None, repr=False)
    stream: bool = False
    stream_read_block: int = 32 << 20


@dataclass
class JobOutcome:
    """How a job ended, for the executor to record.

    Attributes:
        status: ``succeeded``, ``failed`` (or ``cancelled``, decided by the executor).
        ok: the report's verdict, when there is a report.
        error_type, error_message: why it failed (a problem type and one line).
        device: where the conversion ran.
        warnings: the report's warnings (``None`` when there is no report).
        artifacts: the published artifacts' rows (name, filename, media_type, sha256, size).
        source_id: the checkpoint a source by reference was recorded as.
        result: ``{"registry": {"uri", "version"}, "source_version": V}``, as far as known.
    """

    status: JobStatus = JobStatus.failed
    ok: bool | None = None
    error_type: str | None = None
    error_message: str | None = None
    device: str | None = None
    warnings: list[str] | None = None
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    source_id: str | None = None
    result: dict[str, Any] | None = None


@dataclass
class BlobSink:
    """A job's results go to the blob store: the child writes into ``folder``, this
    publishes what it wrote (only regular files in that folder) as the job's artifacts,
    and the weights' attestation, signed here with ``signing_key`` (SPEC §3.3)."""

    store: BlobStore
    folder: Path
    job_id: str
    suffix: str
    control: JobControl
    artifacts: list[dict[str, Any]] = field(default_factory=list)
    signing_key: bytes | None = field(default=None, repr=False)
    upload: Any = None  # a streamed job's StreamUpload: the child sends the weights there

    def weights_path(self, request: ConversionRequest) -> Path | None:
        if request.dry_run or request.stream is not None:
            return None
        if self.suffix == "zip":  # a folder output: zipped when published
            (self.folder / "weights").mkdir(exist_ok=True)
            return self.folder / "weights" / self.job_id
        return self.folder / f"{self.job_id}.{self.suffix}"

    def reports_dir(self) -> Path | None:
        return self.folder

    def publish(self, outcome: ConversionOutcome) -> None:
        self.control.stage("publishing")
        for name, suffix, media, file in _REPORT_FILES:
            self._ingest(name, f"{self.job_id}.{suffix}", media, self.folder / file)
        if outcome.parts is not None and self.upload is not None:
            self._publish_streamed(outcome.parts, outcome.ok)
        elif outcome.weights is not None and outcome.weights.is_dir():
            self._publish_folder(outcome.weights, outcome.ok)
        elif outcome.weights is not None:
            weights = outcome.weights
            sha256 = self._ingest("weights", weights.name, "application/octet-stream", weights)
            if outcome.ok:
                self._attest(weights.name, [(weights.name, sha256)])

    def _publish_folder(self, weights: Path, ok: bool) -> None:
        """A model folder or DCP checkpoint: published as ``<job>.zip``, its attestation
        naming each file in it (as ``graft convert`` attests a folder)."""
        from app.services.jobs.folders import zip_folder

        if weights.parent.resolve() != (self.folder / "weights").resolve():
            raise InternalError("the sandbox produced no usable weights folder")
        archive = self.folder / f"{self.job_id}.zip"
        subjects = zip_folder(weights, archive)
        self._ingest("weights", archive.name, "application/zip", archive)
        if ok:
            self._attest(archive.name, subjects)

    def _publish_streamed(self, parts: list[tuple[int, str]], ok: bool) -> None:
        """Complete the child's upload; the stored bytes are hashed here and published under
        their sha256, as a local file would be (same artifact row)."""
        name = f"{self.job_id}.{self.suffix}"
        sha256, size = self.upload.complete(parts)
        self.artifacts.append(
            {"name": "weights", "filename": name, "media_type": "application/octet-stream",
             "sha256": sha256, "size": size}
        )  # fmt: skip
        if ok:
            self._attest(name, [(name, sha256)], fill=True)

    def _attest(self, weights: str, subjects: list[tuple[str, str]], *, fill: bool = False) -> None:
        """Publish the statement the child wrote of ``weights``, signed with the key (with
        ``fill``, its one subject's digest is the one computed here: a streamed child never
        saw its whole output)."""
        from app.services.attestation import sign_job_statement

        statement = json.loads(
            self._own("attestation", self.folder / "attestation.json").read_text()
        )
        if fill and statement.get("subject") == [
            {"name": subjects[0][0], "digest": {"sha256": ""}}
        ]:
            statement["subject"] = [{"name": subjects[0][0], "digest": {"sha256": subjects[0][1]}}]
        document = sign_job_statement(statement, weights=subjects, signing_key=self.signing_key)
        path = self.folder / f"{weights}.intoto.json"  # as graft convert names it
        path.write_text(json.dumps(document, indent=2, sort_keys=True) + "\n")
        media = _MEDIA_DSSE if self.signing_key is not None else _MEDIA_INTOTO
        self._ingest("attestation", path.name, media, path)

    def _own(self, name: str, path: Path) -> Path:
        # The child's word is not trusted: publish only regular files in its own folder.
        folder = self.folder.resolve()
        if path.is_symlink() or path.resolve().parent != folder or not path.is_file():
            raise InternalError(f"the sandbox produced no usable {name} file")
        return path

    def _ingest(self, name: str, filename: str, media_type: str, path: Path) -> str:
        sha, size = self.store.ingest(self._own(name, path))
        self.artifacts.append(
            {"name": name, "filename": filename, "media_type": media_type, "sha256": sha,
             "size": size}
        )  # fmt: skip
        return sha


@dataclass(frozen=True)
class _Inputs:
    job_id: str
    source_files: list[tuple[str, str]]
    target: TargetSpec
    target_files: list[tuple[str, str]]
    recipe: dict[str, Any] | None
    options: WriteOptions
    dry_run: bool
    source_sha256: str
    source_format: str | None = None
    source_size: int = 0
    templates: list[tuple[str, int]] = field(default_factory=list)  # (format, size) each
    sources: dict[str, tuple[list[tuple[str, str]], str]] = field(default_factory=dict)
    owner: str = ""
    source_ref: SourceRef | None = None
    register: RegisterSpec | None = None
    requested_device: str = "auto"
    reference: ReferenceSpec | None = None


def execute_job(
    database: Database,
    store: BlobStore,
    job_id: str,
    *,
    settings: JobSettings,
    control: JobControl,
) -> JobOutcome:
    """Run one claimed job's conversion and publish its artifacts.

    Args:
        database: where the job's row is read (never written here).
        store: where the inputs come from and the artifacts go.
        job_id: a job this executor holds the lease of.
        settings: the executor's limits, device and architectures.
        control: stage, progress and tick hooks; what they raise propagates (a cancel).

    Returns:
        How the job ended: ``succeeded``, or ``failed`` with a problem type and message.
    """
    outcome = JobOutcome()
    try:
        inputs = _load(database, job_id)
        control.stage("preparing")
        with store.workdir() as work, contextlib.ExitStack() as cleanup:
            if inputs.source_ref is not None:
                inputs = _fetch(inputs, database, store, work, settings, control, outcome)
            suffix = _suffix(inputs.options)
            streamed = _streamed(store, inputs, settings, f"{inputs.job_id}.{suffix}")
            if streamed is not None:
                cleanup.callback(streamed[1].close)  # aborts the upload unless completed
            request = _request(store, inputs, work, settings, streamed[0] if streamed else None)
            (work / "out").mkdir()
            sink = BlobSink(
                store, work / "out", inputs.job_id, suffix, control,
                signing_key=settings.signing_key, upload=streamed[1] if streamed else None,
            )  # fmt: skip
            result = run_conversion(
                request, sink, limits=settings.limits, progress=control.progress,
                tick=control.tick,
            )  # fmt: skip
            outcome.ok, outcome.device, outcome.artifacts = result.ok, result.device, sink.artifacts
            report = Report.from_json(result.report)
            outcome.warnings = [str(w) for w in report.warnings]
            coverage = report.summary.coverage.model_dump(mode="json")
            outcome.result = {**(outcome.result or {}), "coverage": coverage}
            if result.ok and inputs.register is not None:
                control.stage("registering")
                registry = _register(inputs, sink, store, work, settings)
                outcome.result = {**(outcome.result or {}), "registry": registry}
        if result.ok:
            outcome.status = JobStatus.succeeded
        else:
            # strict, shape_mismatch, missing, unmatched rules, allow_empty, parity.
            refusal = PolicyError.of_report(result.report)
            outcome.error_type, outcome.error_message = refusal.type, refusal.message
    except GraftError as exc:
        outcome.error_type, outcome.error_message = exc.type, exc.message
    except Exception as exc:
        logger.exception("job %s failed unexpectedly", job_id)
        error = InternalError(f"{type(exc).__name__}: {exc}")
        outcome.error_type, outcome.error_message = error.type, error.message
    return outcome


def interruptible(control: JobControl, call: Callable[[], T]) -> T:
    """Run a blocking network step (fetch, registration) on a helper thread, calling
    ``control.tick`` every 0.1 s meanwhile, so a cancel (or a lost lease) stops the job at
    once rather than when the step ends. What ``tick`` raises propagates; the abandoned step
    ends on its own (its work folder is removed under it, its result unused; registering
    again is safe, see :func:`app.registry.mlflow_publish.register_version`).

    Args:
        control: the executor's hooks.
        call: the step.

    Returns:
        What ``call`` returned; what it raised is raised here.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the job's thread
            box["error"] = exc

    thread = threading.Thread(target=run, name="job-step", daemon=True)
    thread.start()
    while thread.is_alive():
        control.tick()
        thread.join(_STEP_TICK_SECONDS)
    if "error" in box:
        raise box["error"]
    return cast(T, box["value"])


def _register(
    inputs: _Inputs, sink: BlobSink, store: BlobStore, work: Path, settings: JobSettings
) -> dict[str, Any]:
    """Register the converted result. The conversion stands whatever the registry says: a
    registry failure is recorded as ``{"error": {"type", "message"}}`` on a job that still
    succeeded (its artifacts are published), and registering again is safe (the version is
    found by its ``graft.job_id`` tag before another is created)."""
    spec = inputs.register
    assert spec is not None
    try:
        return interruptible(
            sink.control,
            lambda: register_result(
                spec,
                job_id=inputs.job_id,
                artifacts=sink.artifacts,
                source_sha256=inputs.source_sha256,
                store=store,
                work=work,
                config=settings.registry,
            ),
        )
    except GraftError as exc:
        logger.warning("job %s: converted, but not registered: %s", inputs.job_id, exc.message)
        return {"error": {"type": exc.type, "message": exc.message}}


def _fetch(
    inputs: _Inputs,
    database: Database,
    store: BlobStore,
    work: Path,
    settings: JobSettings,
    control: JobControl,
    outcome: JobOutcome,
) -> _Inputs:
    """Fetch a source by reference (every attempt: an alias may have moved) and record it."""
    if inputs.source_ref is None:
        return inputs
    control.stage("fetching")
    ref = inputs.source_ref
    fetched = interruptible(
        control,
        lambda: fetch_source(
            ref,
            owner=inputs.owner,
            work=work,
            database=database,
            store=store,
            config=settings.registry,
            inspect_limits=settings.inspect_limits,
            max_tensors=settings.max_tensors,
        ),
    )
    outcome.source_id = fetched.checkpoint_id
    if fetched.version is not None:
        outcome.result = {"source_version": fetched.version}
    control.stage("preparing")
    return dataclasses.replace(inputs, source_files=fetched.files, source_sha256=fetched.sha256)


def _load(database: Database, job_id: str) -> _Inputs:
    with database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        if job is None:
            raise LookupError(job_id)
        checkpoints = CheckpointRepository(session)
        source_ref = SourceRef.model_validate(job.source_ref) if job.source_ref else None
        source = (
            None if source_ref or job.sources else _checkpoint(checkpoints, job.source_id, "source")
        )
        target = parse_target_spec(job.target)
        # Each checkpoint the target names, by its own id (the job's foreign key holds the
        # first only, for deletion checks).
        templates = [_checkpoint(checkpoints, ref, "target") for ref in target.checkpoint_refs()]
        sources = {
            name: (checkpoint_files(c), c.sha256)
            for name, c in (
                (n, _checkpoint(checkpoints, i, f"{n!r} source"))
                for n, i in (job.sources or {}).items()
            )
        }
        return _Inputs(
            job_id=job.id,
            sources=sources,
            source_files=checkpoint_files(source) if source else [],
            target=target,
            target_files=[f for c in templates for f in checkpoint_files(c)],
            templates=[(c.format, c.size) for c in templates],
            recipe=job.recipe,
            options=_options(job),
            dry_run=job.dry_run,
            # Hashed at upload (or when fetched): the engine need not hash again.
            source_sha256=source.sha256 if source else "",
            source_format=source.format if source else None,
            source_size=source.size if source else 0,
            owner=job.owner,
            source_ref=source_ref,
            register=RegisterSpec.model_validate(job.register) if job.register else None,
            requested_device=job.requested_device,
            reference=ReferenceSpec.model_validate(job.reference) if job.reference else None,
        )


def _options(job: Job) -> WriteOptions:
    return WriteOptions(
        format=job.output_format,  # type: ignore[arg-type]
        dtype=job.output_dtype,
        folder=job.output_folder,
    )


def _link_sources(store: BlobStore, inputs: _Inputs, work: Path) -> dict[str, list[Path]]:
    """Several sources' blobs, each linked into its own folder ``sources/NAME``."""
    if not inputs.sources:
        return {}
    (work / "sources").mkdir()
    return {
        name: link_blobs(store, files, work / "sources" / name)
        for name, (files, _) in inputs.sources.items()
    }


def _suffix(options: WriteOptions) -> str:
    """The weights artifact's suffix: a folder (``folder``, ``dcp``) is published zipped."""
    if options.folder or options.format == "dcp":
        return "zip"
    return "safetensors" if options.format == "safetensors" else "pt"


def _checkpoint(repo: CheckpointRepository, checkpoint_id: str | None, what: str) -> Checkpoint:
    checkpoint = repo.get(checkpoint_id) if checkpoint_id else None
    if checkpoint is None:
        raise NotFoundError(f"the {what} checkpoint was deleted")
    return checkpoint


def job_device(requested: str, worker: str) -> str:
    """The device a job runs on: the one it asked for, never another. ``cpu`` runs on the CPU
    even on a GPU worker; ``cuda`` runs on this worker's GPU, and fails
    ``device-unavailable`` where torch sees none (never quietly on the CPU); ``auto`` takes
    the worker's device.

    Args:
        requested: the job's ``device``: ``auto``, ``cpu`` or ``cuda``.
        worker: the worker's device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
    """
    if requested == "cpu":
        return "cpu"
    if requested == "cuda":
        return worker if worker.startswith("cuda") else "cuda"
    return worker


def _streamed(
    store: BlobStore, inputs: _Inputs, settings: JobSettings, output_name: str
) -> tuple[StreamSpec, Any] | None:
    """The child's stream and the upload, when the job can stream (see
    :mod:`app.services.jobs.streamed`); ``None`` for the local path."""
    if not settings.stream or inputs.dry_run:
        return None
    refusal = stream_refusal(
        source_files=inputs.source_files,
        source_format=inputs.source_format,
        template_formats=[f for f, _ in inputs.templates]
        + (["files"] if len(inputs.target_files) > len(inputs.templates) else []),
        several=bool(inputs.sources),
        target=inputs.target,
        options=inputs.options,
        device=job_device(inputs.requested_device, settings.device),
        parity=inputs.reference is not None,
    )
    if refusal is not None:
        logger.debug("job %s takes the local path: %s", inputs.job_id, refusal)
        return None
    template = (*inputs.target_files[0], inputs.templates[0][1]) if inputs.templates else None
    return streamed_upload(
        store,
        source=(*inputs.source_files[0], inputs.source_size),
        template=template,
        output_name=output_name,
        read_block=settings.stream_read_block,
    )


def _request(
    store: BlobStore,
    inputs: _Inputs,
    work: Path,
    settings: JobSettings,
    stream: StreamSpec | None = None,
) -> ConversionRequest:
    """Link the job's blobs into ``work`` and describe the conversion over those files
    (with ``stream``, the source is read by the child from the store, never linked)."""
    return ConversionRequest(
        source=[] if stream else link_blobs(store, inputs.source_files, work / "source"),
        stream=stream,
        sources=_link_sources(store, inputs, work),
        sources_sha256={name: sha for name, (_, sha) in inputs.sources.items()},
        target=inputs.target,
        target_files=[] if stream else link_blobs(store, inputs.target_files, work / "target"),
        recipe=load_recipe(inputs.recipe),
        options=WriteOptions(
            format=inputs.options.format,
            dtype=inputs.options.dtype,
            folder=inputs.options.folder,
            device=job_device(inputs.requested_device, settings.device),
            # Parity runs in the job's child, on its device (SPEC §3.2); never an import.
            parity=(
                parity_spec(inputs.reference, architectures=settings.architectures)
                if inputs.reference is not None
                else None
            ),
        ),
        dry_run=inputs.dry_run,
        source_sha256=inputs.source_sha256,
        device_index=settings.device_index,
        architectures=settings.architectures,
    )
