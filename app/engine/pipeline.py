"""One conversion end to end: open, plan, write, verify, report. The engine's front door.

read (:mod:`app.engine.readers`) -> plan (:mod:`app.engine.plan`) -> produce
(:mod:`app.engine.produce`, :mod:`app.engine.ops`) -> write (:mod:`app.engine.write`,
:mod:`app.engine.output`) -> verify (:mod:`app.engine.verify`) -> report
(:mod:`app.engine.report`, built once).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__
from app.engine.devices import Device
from app.engine.errors import GraftError, InvalidRecipeError
from app.engine.lora_step import apply_lora_step
from app.engine.options import WriteOptions
from app.engine.output.execution import DIGEST_PLACEHOLDER, Execution
from app.engine.output.streamed import StreamedOutput
from app.engine.plan import Plan, build_plan
from app.engine.plan.ties import store_ties_once
from app.engine.produce import Producer
from app.engine.progress import Progress, ProgressEvent
from app.engine.provenance import describe_target
from app.engine.readers import (
    NamedSources,
    RemoteBlob,
    SeveralSources,
    Source,
    open_several,
    open_source,
)
from app.engine.recipe import Recipe
from app.engine.report import build_manifest, build_report, entries_digest, report_entries
from app.engine.target import Target
from app.engine.warning import Warning
from app.engine.write import Stamp, execute_plan, execute_streamed

if TYPE_CHECKING:
    from app.engine.architectures import BoundArchitecture
    from app.engine.parity_models import ParitySpec
    from app.engine.verify import ModelCheck

__all__ = ["ConversionResult", "KnownSource", "StreamedOutput", "convert"]

SourcePath = (
    str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path] | NamedSources | RemoteBlob
)


@dataclass(frozen=True)
class KnownSource:
    """What the caller already knows of the source, beyond its files.

    Attributes:
        sha256: the source's digest when the caller already knows it (the service hashes
            uploads as they stream in); otherwise ``options.source_digest`` says which
            digest identifies the source (BLAKE3 by default), computed in a thread beside
            the copy. A dry run never hashes: planning reads headers only.
        architecture: the architecture the source checkpoint belongs to (see
            ``app.engine.architectures.bind_architecture``). With an architecture target and
            a recipe that only renamed keys, both models run and must agree (allclose).
        parts_sha256: several sources' digests by name, when already known; their listing's
            digest is then the source's sha256 (see ``SeveralSources``).
    """

    sha256: str | None = None
    architecture: BoundArchitecture | None = None
    parts_sha256: Mapping[str, str] = field(default_factory=dict)


@dataclass
class ConversionResult:
    """What a conversion returns.

    Attributes:
        ok: the recipe's policy accepted it and verification passed.
        report: the ``graft.report/v1`` document (:meth:`Report.to_json`; read it back,
            typed, with :meth:`Report.from_json`).
        manifest: frozen keys and BatchNorm layers to keep in eval mode.
        output: the written file, or ``None`` for a dry run or a refusal.
        file_sha256: output file -> its sha256, for the files hashed as they were written
            (the attestation hashes the others).
    """

    ok: bool
    report: dict[str, Any]
    manifest: dict[str, Any]
    output: Path | None
    file_sha256: dict[Path, str] = field(default_factory=dict)


def convert(
    source: SourcePath,
    target: Target,
    recipe: Recipe,
    *,
    output: Path | StreamedOutput | None,
    options: WriteOptions = WriteOptions(),  # noqa: B008 - frozen, so one shared default is safe
    dry_run: bool = False,
    progress: Progress | None = None,
    known: KnownSource = KnownSource(),
) -> ConversionResult:
    """Convert ``source`` into ``target`` following ``recipe``.

    Args:
        source: a checkpoint path, a sharded set (directory, index, files, name -> path),
            or several sources by name (:class:`NamedSources`: keys become ``NAME:KEY``).
        target: what the weights must fit.
        recipe: a validated recipe (see ``load_recipe``).
        output: where the weights go (a folder with ``options.folder`` or shards), or a
            :class:`StreamedOutput` (one safetensors file in parts); unused in a dry run.
        options: how to write and verify; see :class:`WriteOptions`.
        dry_run: plan and report only; no tensor data is read.
        progress: called with a ``ProgressEvent`` as the conversion moves on.
        known: what the caller already knows of the source: its sha256 and the
            architecture it belongs to (see :class:`KnownSource`).

    Returns:
        The result. A policy refusal gives ``ok=False`` and a report, and writes nothing.

    Raises:
        GraftError: bad or unsafe input, an invalid recipe or target.
    """
    if isinstance(output, StreamedOutput) and not dry_run:
        _check_streamable(source, target, options, known)
    with _open(source, recipe) as src:
        if isinstance(src, SeveralSources) and known.parts_sha256:
            src.know_sha256(known.parts_sha256)
            known = replace(known, sha256=src.sha256())
        if progress:
            progress(ProgressEvent("plan", 0.0))
        plan = build_plan(src, target, recipe, dtype=options.dtype)
        if target.tied and options.format == "safetensors":
            store_ties_once(plan, target.tied)  # as save_pretrained: transformers re-ties
        manifest = build_manifest(plan, target, recipe).to_json()
        if dry_run or not plan.ok or output is None:
            report = build_report(plan, src, target, source_sha256=known.sha256)
            return ConversionResult(report.ok and plan.ok, report.to_json(), manifest, None)
        # The one place the device is named; it resolves on first use (a byte-copy
        # conversion never does, so it never imports torch).
        device = Device(options.device)
        producer = Producer(src, target, recipe.seed, device)
        identity = _identity(src, options, known.sha256)
        if isinstance(output, StreamedOutput):
            return _streamed(plan, producer, output, options, recipe, identity, manifest,
                             progress)  # fmt: skip
        with ThreadPoolExecutor(max_workers=1) as pool:
            # The source's identity is hashed beside the copy (the copy runs in the kernel
            # and BLAKE3 releases the GIL); the output's metadata waits for it.
            hashing = pool.submit(identity[1]) if identity else None
            digest = hashing.result if hashing else str
            execution = execute_plan(
                plan, producer, Path(output), options=options,
                stamp=_stamp(plan, recipe, target, identity[0] if identity else None, digest),
                progress=progress,
                beside=_model_files(plan, target) if _is_folder(options) else None,
            )  # fmt: skip
        model = None
        if options.verify:
            model = _verify_on_model(Path(output), plan, producer, known.architecture, progress)
        model = _parity(model, options.parity, Path(output), plan, producer, recipe, execution)
        kind = identity[0] if identity else None
        report = build_report(
            plan, src, target, execution=execution, model=model,
            source_sha256=digest() if kind == "sha256" else None,
            source_blake3=digest() if kind == "blake3" else None,
        )  # fmt: skip
        written = Path(output)
        return ConversionResult(
            report.ok, report.to_json(), manifest, written, execution.file_sha256
        )


def _check_streamable(
    source: SourcePath, target: Target, options: WriteOptions, known: KnownSource
) -> None:
    """Refuse what a streamed output cannot do: run the output in a model (it is never
    whole on this host), or hash the source again (it is known by its sha256)."""
    if options.parity is not None or (options.verify and target.architecture):
        raise GraftError(
            "a streamed output cannot be run in a model (parity, or verifying an "
            "architecture target): write a local file"
        )
    remote_sha256 = source.sha256 if isinstance(source, RemoteBlob) else None
    if options.source_digest != "none" and not (known.sha256 or remote_sha256):
        raise GraftError(
            "a streamed source is identified by the sha256 its caller knows: pass it "
            "(or source_digest none)"
        )


def _streamed(
    plan: Plan,
    producer: Producer,
    output: StreamedOutput,
    options: WriteOptions,
    recipe: Recipe,
    identity: tuple[str, Callable[[], str]] | None,
    manifest: dict[str, Any],
    progress: Progress | None,
) -> ConversionResult:
    """:func:`convert`'s write, check and report for a streamed output (the source's
    identity is hashed first, not beside: a streamed source is known by its sha256)."""
    kind = identity[0] if identity else None
    digest = identity[1] if identity else str
    stamp = _stamp(plan, recipe, producer.target, kind, digest)
    execution = execute_streamed(
        plan, producer, output, options=options, stamp=stamp, progress=progress
    )
    report = build_report(
        plan, producer.source, producer.target, execution=execution, model=None,
        source_sha256=digest() if kind == "sha256" else None,
        source_blake3=digest() if kind == "blake3" else None,
    )  # fmt: skip
    return ConversionResult(report.ok, report.to_json(), manifest, None)


def _open(source: SourcePath, recipe: Recipe) -> Source:
    """One source, or several by name (keys ``NAME:KEY``), each read as the recipe says."""
    named = set(source.paths) if isinstance(source, NamedSources) else set()
    if recipe.sources and named != set(recipe.sources):
        lacking = ", ".join(sorted(set(recipe.sources) - named)) or "none"
        extra = ", ".join(sorted(named - set(recipe.sources))) or "none"
        raise InvalidRecipeError(
            f"the recipe names sources {', '.join(recipe.sources)}: give each one "
            f"(missing: {lacking}; not in the recipe: {extra})",
            rule="sources",
        )
    if isinstance(source, NamedSources):
        specs = {}
        for name in source.paths:
            spec = recipe.source_spec(name)
            specs[name] = (spec.entry, spec.strip_prefixes)
        several = open_several(source.paths, specs)
        try:
            apply_lora_step(several, recipe, source.paths)
        except BaseException:
            several.close()
            raise
        return several
    if recipe.lora is not None:
        raise InvalidRecipeError(
            "lora merges one source into another: name both (sources: {base: …, adapter: …})",
            rule="lora",
        )
    spec = recipe.source
    return open_source(source, entry=spec.entry, strip_prefixes=spec.strip_prefixes)


def _identity(
    src: Source, options: WriteOptions, known_sha256: str | None
) -> tuple[str, Callable[[], str]] | None:
    """Which digest identifies the source, and how to get it: the caller's sha256 when it
    has one (uploads are hashed as they stream in), else ``options.source_digest``."""
    if known_sha256:
        return "sha256", lambda: known_sha256
    if options.source_digest == "sha256":
        return "sha256", src.sha256
    if options.source_digest == "blake3":
        return "blake3", src.blake3
    return None


def _is_folder(options: WriteOptions) -> bool:
    return options.folder or options.max_shard_size is not None


def _model_files(plan: Plan, target: Target) -> dict[str, bytes]:
    """``config.json`` for a folder output into an architecture that declares its transformers
    config (``hf_config``), with the written dtype as ``torch_dtype``, as ``save_pretrained``;
    and ``generation_config.json`` when its factory also declares ``hf_generation_config``."""
    bound = target.architecture
    config = bound.hf_config() if bound is not None else None
    if bound is None or config is None:
        return _template_files(target)
    dtypes = [e.dtype for e in plan.entries if e.dtype.startswith(("float", "bfloat"))]
    if dtypes and "torch_dtype" not in config:
        config = {**config, "torch_dtype": max(set(dtypes), key=dtypes.count)}
    files = {"config.json": config}
    generation = getattr(bound.architecture.factory, "hf_generation_config", None)
    if callable(generation):
        files["generation_config.json"] = generation(bound.kwargs)
    return {
        name: (json.dumps(v, indent=2, sort_keys=True) + "\n").encode() for name, v in files.items()
    }


def _template_files(target: Target) -> dict[str, bytes]:
    """A template target read from a model folder: its ``config.json`` and
    ``generation_config.json``, so the output folder loads as the template's does."""
    template = target.template
    if template is None or len({p.parent for p in template.paths}) != 1:
        return {}
    folder = template.paths[0].parent
    files = {}
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if path.is_file() and path.stat().st_size <= 1 << 20:
            files[name] = path.read_bytes()
    return files


def _stamp(
    plan: Plan,
    recipe: Recipe,
    target: Target,
    identity: str | None,
    source_digest: Callable[[], str],
) -> Stamp:
    """The output's metadata: the header comes before the data, so it is written with
    placeholders of the final lengths and completed once the digests are known.

    ``graft.source_sha256`` or ``graft.source_blake3`` names the source (both are 64 hex
    digits); neither when the conversion took no source identity (``--no-verify``).
    ``graft.target`` describes the target, so the file alone can be replayed (SPEC §3.3)."""
    placeholder = {
        # What `transformers` (4.x) and `safetensors` loaders check: the file holds torch tensors.
        "format": "pt",
        "graft.version": __version__,
    }
    if identity is not None:
        placeholder[f"graft.source_{identity}"] = DIGEST_PLACEHOLDER
    placeholder |= {
        "graft.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True),
        # Not canonical: a skeleton's key order is the output's tensor order.
        "graft.target": json.dumps(describe_target(target), separators=(",", ":")),
        "graft.report_sha256": DIGEST_PLACEHOLDER,
    }

    def finalize(execution: Execution) -> dict[str, str]:
        entries, unused = report_entries(plan, execution.digests)
        final = {**placeholder, "graft.report_sha256": entries_digest(entries, unused)}
        if identity is not None:
            final[f"graft.source_{identity}"] = source_digest()
        return final

    return Stamp(placeholder, finalize)


def _parity(
    model: ModelCheck | None,
    spec: ParitySpec | None,
    output: Path,
    plan: Plan,
    producer: Producer,
    recipe: Recipe,
    execution: Execution,
) -> ModelCheck | None:
    """Parity (``app.engine.parity_run``) when ``spec`` asks for it, added to the model
    checks as ``verification.parity``; a divergence is a failure, or a warning with
    ``parity: warn``."""
    if spec is None:
        return model
    from app.engine.parity_run import check_parity
    from app.engine.verify import ModelCheck

    check = check_parity(
        spec, output=output, plan=plan, source=producer.source, target=producer.target,
        recipe=recipe, device=producer.device.name,
    )  # fmt: skip
    model = model or ModelCheck()
    model.sections["parity"] = check.section
    model.failures += check.failures
    execution.warnings += [Warning.model_validate(w) for w in check.warnings]
    return model


def _verify_on_model(
    output: Path,
    plan: Plan,
    producer: Producer,
    source_architecture: BoundArchitecture | None,
    progress: Progress | None,
) -> ModelCheck | None:
    """Run the converted weights in the target's model (see ``app.engine.verify``); ``None``
    when the target is not an architecture."""
    architecture = producer.target.architecture
    if architecture is None:
        return None
    from app.engine.verify import verify_on_model

    if progress:
        progress(ProgressEvent("verify-model", 0.0))
    check = verify_on_model(
        output,
        architecture,
        plan,
        device=producer.device.name,
        source=producer.source,
        source_architecture=source_architecture,
    )
    if progress:
        progress(ProgressEvent("verify-model", 1.0))
    return check
