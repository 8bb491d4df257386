"""The one seam where a request turns into a conversion, a dry run or a plan.

A :class:`ConversionRequest` says what to convert (the source's files, a ``TargetSpec``, a
recipe, :class:`~app.engine.options.WriteOptions`; ``dry_run`` for a plan); a :class:`Sink`
says where the results go. :func:`run_conversion` runs the engine in a one-shot sandbox
child with resource limits (jobs: the files are untrusted uploads) or in this process (the
CLI, on the user's own files); :func:`run_conversion_pooled` runs the same child function in
a warm pooled child (the API's plans, answered at once). Either way the sink gets the
weights, report and manifest. The request travels to the child as JSON and is rebuilt there
as it is; the child never sees the database or the blob store.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from app.engine.architectures import ArchitectureRef
from app.engine.options import WriteOptions
from app.engine.progress import Progress, ProgressEvent, TensorCounts
from app.engine.recipe import Recipe
from app.engine.target import Target
from app.engine.target_spec import ArchitectureTarget, TargetSpec
from app.errors import InternalError
from app.sandbox.pool import ChildPool
from app.sandbox.runner import Limits, apply_limits, run_sandboxed
from app.services.stream_io import StreamSpec
from app.services.warmth import CONVERSION_PRELOAD

__all__ = [
    "ConversionOutcome",
    "ConversionRequest",
    "PathSink",
    "Sink",
    "Warmth",
    "convert_in_child",
    "manifest_path",
    "run_conversion",
    "run_conversion_pooled",
    "warm_up",
]


# What the fork server imports once, so each job's child starts with torch loaded. (The
# engine imports torch lazily, so it is named here: a fresh import costs seconds.)
_CHILD_PRELOAD = CONVERSION_PRELOAD


class ConversionRequest(BaseModel):
    """Everything one conversion needs, as data (it crosses into the sandbox as JSON).

    Attributes:
        source: the source's files (one file, or the files of a sharded set).
        sources: several sources by name, each its files (their keys become ``NAME:KEY``);
            used instead of ``source`` when given.
        target: the target as data.
        target_files: a checkpoint target's files, resolved by the caller; else empty.
        recipe: the validated recipe.
        options: how to write and verify.
        dry_run: plan and report only.
        source_sha256: the source's digest when already known (uploads are hashed as they
            arrive), so the engine need not hash it again.
        sources_sha256: the same for several sources, by name.
        source_architecture: the architecture the source belongs to (``--source-arch``).
        device_index: this worker's number on its host; ``auto``/``cuda`` pin worker ``i``
            to GPU ``i % count``.
        architectures: more architectures, (name, module, factory) triples.
        stream: read the one safetensors source by ranged GETs and stream the weights, one
            safetensors file, to a multipart upload (see :mod:`app.services.stream_io`),
            instead of ``source`` and a local weights file.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: list[Path] = []
    sources: dict[str, list[Path]] = {}
    target: TargetSpec
    target_files: list[Path] = []
    recipe: Recipe
    options: WriteOptions = WriteOptions()
    dry_run: bool = False
    source_sha256: str | None = None
    sources_sha256: dict[str, str] = {}
    source_architecture: ArchitectureTarget | None = None
    device_index: int = 0
    architectures: tuple[ArchitectureRef, ...] = ()
    stream: StreamSpec | None = None


@dataclass
class ConversionOutcome:
    """What a conversion produced.

    Attributes:
        ok: the recipe's policy accepted it and verification passed.
        report: the ``graft.report/v1`` document.
        manifest: what the receiving side must do besides loading.
        weights: the written weights (a file, or a folder of shards); None for a dry run
            or a refusal.
        device: the device the work ran on, when it was resolved.
        parts: a streamed output's ``(part number, ETag)`` pairs, when it was written.
        file_sha256: output file -> sha256, for the files hashed as they were written
            (in this process only; the attestation hashes the others).
    """

    ok: bool
    report: dict[str, Any]
    manifest: dict[str, Any]
    weights: Path | None
    device: str | None = None
    parts: list[tuple[int, str]] | None = None
    file_sha256: dict[Path, str] = dataclasses.field(default_factory=dict)


class Sink(Protocol):
    """Where a conversion's results go: the weights path the engine writes, then the rest."""

    def weights_path(self, request: ConversionRequest) -> Path | None:
        """Where the engine writes the weights (None: nowhere, e.g. a dry run)."""
        ...

    def reports_dir(self) -> Path | None:
        """A folder the child may write ``report.json``, ``report.txt``, ``manifest.json``
        (and, for written weights, ``attestation.json``: their unsigned statement) into."""
        ...

    def publish(self, outcome: ConversionOutcome) -> None:
        """Take what the conversion wrote (the weights, and the reports when it wrote them)."""
        ...


@dataclass(frozen=True)
class PathSink:
    """Local paths (the CLI): the weights at ``output``, the report at ``report`` when it is
    given, and the manifest beside the weights (``OUT``'s stem + ``.manifest.json``) whenever
    it asks for something (frozen keys or BatchNorm layers in eval mode)."""

    output: Path | None
    report: Path | None = None

    def weights_path(self, request: ConversionRequest) -> Path | None:
        return None if request.dry_run else self.output

    def reports_dir(self) -> Path | None:
        return None

    def publish(self, outcome: ConversionOutcome) -> None:
        if self.report is not None:
            self.report.write_bytes(_json(outcome.report))
        path = manifest_path(outcome.weights) if outcome.weights is not None else None
        if path is not None and (outcome.manifest.get("frozen") or outcome.manifest.get("bn_eval")):
            path.write_bytes(_json(outcome.manifest))


def manifest_path(weights: Path) -> Path:
    """Where a local conversion's manifest goes: beside the weights, ``OUT``'s stem +
    ``.manifest.json`` (``graft submit``'s name too)."""
    return weights.with_name(weights.stem + ".manifest.json")


def run_conversion(
    request: ConversionRequest,
    sink: Sink,
    *,
    limits: Limits | None,
    progress: Progress | None = None,
    tick: Callable[[], None] | None = None,
) -> ConversionOutcome:
    """Run one conversion and leave its results where ``sink`` says.

    Args:
        request: what to convert.
        sink: where the weights are written, and the reports.
        limits: run in a sandbox child under these limits; ``None`` runs in this process
            (only for files the caller trusts as much as itself: the CLI's).
        progress: called with (stage, fraction in 0..1).
        tick: called about every 0.1 s while a sandbox child runs; raising from it (or from
            ``progress``) kills the child and propagates.

    Returns:
        The outcome. A policy refusal is ``ok=False`` with a report, not an exception.

    Raises:
        GraftError: bad or unsafe input, an invalid recipe or target (in a child: a
            the same error class again, by its problem ``type``).
    """
    weights = sink.weights_path(request)
    reports = sink.reports_dir()
    if limits is None:
        outcome = _convert(request, weights, reports, progress)
    else:
        outcome = _convert_in_sandbox(request, weights, reports, limits, progress, tick)
    sink.publish(outcome)
    return outcome


async def run_conversion_pooled(
    request: ConversionRequest, sink: Sink, *, pool: ChildPool
) -> ConversionOutcome:
    """:func:`run_conversion` in one of ``pool``'s warm children, under its limits and timeout.

    For work that must answer at once and reads headers only (a dry run): no progress, and
    the child's address space is the pool's.

    Raises:
        SandboxError: as :func:`run_conversion` in a child; ``ChildTimeoutError`` or
            ``ChildLostError`` when the child hung or died.
    """
    weights = sink.weights_path(request)
    reports = sink.reports_dir()
    result = await pool.call(convert_in_child, _child_payload(request, weights, reports, 0))
    outcome = _child_outcome(result)
    sink.publish(outcome)
    return outcome


def _child_payload(
    request: ConversionRequest, weights: Path | None, reports: Path | None, address_space: int
) -> dict[str, Any]:
    return {
        "request": request.model_dump(mode="json"),
        "weights": str(weights) if weights is not None else None,
        "reports": str(reports) if reports is not None else None,
        # Applied by the child once it knows its device: CUDA maps far more address space
        # than it uses, so a GPU child runs without this one limit.
        "address_space": address_space,
    }


def _child_outcome(result: dict[str, Any]) -> ConversionOutcome:
    return ConversionOutcome(
        ok=bool(result["ok"]),
        report=result["report"],
        manifest=result["manifest"],
        weights=Path(result["weights"]) if result["weights"] else None,
        device=result["device"],
        parts=[(int(n), str(etag)) for n, etag in result["parts"]]
        if result.get("parts") is not None
        else None,
    )


def _convert_in_sandbox(
    request: ConversionRequest,
    weights: Path | None,
    reports: Path | None,
    limits: Limits,
    progress: Progress | None,
    tick: Callable[[], None] | None,
) -> ConversionOutcome:
    result = run_sandboxed(
        convert_in_child,
        _child_payload(request, weights, reports, limits.address_space),
        limits=dataclasses.replace(limits, address_space=0),
        preload=_CHILD_PRELOAD,
        on_event=(lambda e: _relay(progress, e)) if progress is not None else None,
        tick=tick,
    )
    return _child_outcome(result)


@dataclass(frozen=True)
class Warmth:
    """What :func:`warm_up` found: how long it took, and whether torch sees a GPU (asked
    in the child, so that the worker's own process never imports torch)."""

    seconds: float
    cuda: bool


def warm_up() -> Warmth:
    """Start the conversion fork server (torch imported) and run one child through it, so
    the first job costs what the tenth does.

    Returns:
        How long it took, and whether CUDA is available.
    """
    started = time.monotonic()
    cuda = run_sandboxed(ready_in_child, {}, limits=Limits(), preload=_CHILD_PRELOAD)
    return Warmth(seconds=time.monotonic() - started, cuda=bool(cuda))


def ready_in_child(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> Any:
    """A warm-up child's work: touch torch's tensor machinery once; say whether a GPU is
    there (CUDA is initialised in this child only, never in the fork server)."""
    import torch

    torch.zeros(1).numel()
    return bool(torch.cuda.is_available())


def _relay(progress: Progress, event: dict[str, Any]) -> None:
    """A child's progress message, handed to the parent's callback as the event it was."""
    progress(ProgressEvent.from_json(event))


class _ChildProgress:
    """The child's progress callback: throttled (the engine may report per tensor; the
    parent needs a few events per second), carrying the latest counts."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.last_stage = ""
        self.last_at = 0.0
        self.latest: TensorCounts | None = None

    def __call__(self, event: ProgressEvent) -> None:
        self.latest = event.counts or self.latest
        now = time.monotonic()
        stage, fraction = event.stage, event.fraction
        if stage != self.last_stage or now - self.last_at >= 0.1 or fraction >= 1.0:
            self.last_stage, self.last_at = stage, now
            sent = ProgressEvent(stage, fraction, self.latest)
            self.emit({"event": "progress", **sent.to_json()})


def convert_in_child(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> Any:
    """The sandbox child's side: rebuild the request, convert, return the outcome as JSON."""
    request = ConversionRequest.model_validate(payload["request"])
    progress = _ChildProgress(emit)

    from app.engine.devices import resolve_device

    device = resolve_device(request.options.device, index=request.device_index)
    if device == "cpu" and payload.get("address_space"):
        apply_limits(Limits(address_space=int(payload["address_space"])))
    request = request.model_copy(
        update={"options": dataclasses.replace(request.options, device=device)}
    )
    weights = Path(payload["weights"]) if payload["weights"] else None
    reports = Path(payload["reports"]) if payload["reports"] else None
    outcome = _convert(request, weights, reports, progress)
    outcome.device = device
    return {
        "ok": outcome.ok,
        "report": outcome.report,
        "manifest": outcome.manifest,
        "weights": str(outcome.weights) if outcome.weights is not None else None,
        "device": outcome.device,
        "parts": outcome.parts,
    }


def _convert(
    request: ConversionRequest,
    weights: Path | None,
    reports: Path | None,
    progress: Progress | None,
) -> ConversionOutcome:
    """Build the target, convert, write the reports: where the work runs."""
    from app.engine.architectures import bind_architecture
    from app.engine.pipeline import KnownSource, convert

    source_arch = None
    if request.source_architecture is not None:
        spec = request.source_architecture
        source_arch = bind_architecture(spec.architecture, spec.kwargs, extra=request.architectures)
    if request.stream is not None:
        return _convert_streamed(request, request.stream, reports, progress)
    files = request.target_files or None
    target = Target.from_spec(
        request.target,
        files=(files[0] if len(files) == 1 else files) if files else None,
        architectures=request.architectures,
    )
    with target:
        result = convert(
            _source_paths(request),
            target,
            request.recipe,
            output=weights,
            options=request.options,
            dry_run=request.dry_run,
            progress=progress,
            known=KnownSource(
                sha256=request.source_sha256,
                architecture=source_arch,
                parts_sha256=request.sources_sha256,
            ),
        )
    if reports is not None:
        from app.engine.report import render_text

        (reports / "report.json").write_bytes(_json(result.report))
        (reports / "report.txt").write_bytes(render_text(result.report).encode())
        (reports / "manifest.json").write_bytes(_json(result.manifest))
    written = result.output if result.output is not None and not request.dry_run else None
    if reports is not None and written is not None and result.ok:
        # The statement is made where the output is (SPEC §3.3); the worker signs it.
        from app.services.attestation import output_statement

        recipe = request.recipe.model_dump(mode="json", by_alias=True)
        statement = output_statement(
            written, result.report, recipe=recipe, file_sha256=result.file_sha256
        )
        (reports / "attestation.json").write_bytes(_json(statement))
    return ConversionOutcome(
        result.ok, result.report, result.manifest, written, file_sha256=result.file_sha256
    )


def _convert_streamed(
    request: ConversionRequest,
    spec: StreamSpec,
    reports: Path | None,
    progress: Progress | None,
) -> ConversionOutcome:
    """:func:`_convert` from a ranged-GET source to a multipart upload's parts: nothing of
    the source or the weights touches the disk."""
    from app.engine.pipeline import KnownSource, StreamedOutput, convert
    from app.engine.readers import RemoteBlob
    from app.services.stream_io import PresignedParts, RemoteFile, ranged_fetch

    if request.sources or request.dry_run or request.source_architecture is not None:
        raise InternalError("a streamed conversion reads one source and writes its weights")

    def remote(file: RemoteFile) -> RemoteBlob:
        fetch = ranged_fetch(spec, file)
        return RemoteBlob(file.name, file.size, fetch, spec.read_block, sha256=file.sha256)

    source = remote(spec.source)
    sink = PresignedParts(spec)
    files = request.target_files or None
    target = Target.from_spec(
        request.target,
        files=remote(spec.target) if spec.target else _one(files) if files else None,
        architectures=request.architectures,
    )
    try:
        with target:
            result = convert(
                source, target, request.recipe,
                output=StreamedOutput(spec.output_name, sink), options=request.options,
                progress=progress, known=KnownSource(sha256=spec.source.sha256),
            )  # fmt: skip
        parts = sink.finish() if sink.header else None
    finally:
        sink.close()
    if reports is not None:
        from app.engine.report import render_text

        (reports / "report.json").write_bytes(_json(result.report))
        (reports / "report.txt").write_bytes(render_text(result.report).encode())
        (reports / "manifest.json").write_bytes(_json(result.manifest))
        if parts is not None and result.ok:
            from app.services.attestation import streamed_statement

            statement = streamed_statement(spec.output_name, sink.header, result.report)
            (reports / "attestation.json").write_bytes(_json(statement))
    return ConversionOutcome(result.ok, result.report, result.manifest, None, parts=parts)


def _one(files: list[Path]) -> Path | list[Path]:
    return files[0] if len(files) == 1 else files


def _source_paths(request: ConversionRequest) -> Any:
    """What the engine opens: one file, one set's files, or several sources by name."""
    from app.engine.readers import NamedSources

    def one(files: list[Path]) -> Path | list[Path]:
        return files[0] if len(files) == 1 else files

    if request.sources:
        return NamedSources({name: one(files) for name, files in request.sources.items()})
    return one(request.source)


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()
