"""One conversion end to end: open, plan, write, verify, report. The engine's front door."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app import __version__
from app.engine.checkpoint import Source, open_source
from app.engine.devices import resolve_device
from app.engine.execute import DIGEST_PLACEHOLDER, Execution, OutputFormat, execute_plan
from app.engine.options import WriteOptions
from app.engine.plan import Plan, build_plan
from app.engine.recipe import Recipe
from app.engine.report import build_manifest, build_report, entries_digest
from app.engine.target import Target

if TYPE_CHECKING:
    from app.engine.architectures import BoundArchitecture

__all__ = ["ConversionResult", "convert"]

SourcePath = str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path]


@dataclass
class ConversionResult:
    """What a conversion returns.

    Attributes:
        ok: the recipe's policy accepted it and verification passed.
        report: the ``graft.report/v1`` document.
        manifest: frozen keys and BatchNorm layers to keep in eval mode.
        output: the written file, or ``None`` for a dry run or a refusal.
    """

    ok: bool
    report: dict[str, Any]
    manifest: dict[str, Any]
    output: Path | None


def convert(
    source: SourcePath,
    target: Target,
    recipe: Recipe,
    *,
    output: Path | None,
    options: WriteOptions = WriteOptions(),  # noqa: B008 - frozen
    dry_run: bool = False,
    progress: Callable[[str, float], None] | None = None,
    source_sha256: str | None = None,
    source_architecture: BoundArchitecture | None = None,
) -> ConversionResult:
    """Convert ``source`` into ``target`` following ``recipe``.

    Args:
        source: a checkpoint path, a sharded set (directory, index, files, name -> path).
        target: what the weights must fit.
        recipe: a validated recipe (see ``load_recipe``).
        output: where to write the weights; ignored for a dry run.
        fmt: ``safetensors`` (default, streamed) or ``torch``.
        dtype: overrides ``recipe.dtype`` when given.
        dry_run: plan and report only; no tensor data is read.
        device: where shape ops and model verification run: ``auto`` (CUDA when present),
            ``cpu``, ``cuda``, ``cuda:N``; the output is always written from the CPU.
        progress: called with (stage, fraction in 0..1).
        max_shard_size: write Hugging Face shards of at most this many bytes into the folder
            ``output`` (``model-0000i-of-0000N.safetensors`` + ``model.safetensors.index.json``).
        verify: re-read the output and compare every fed tensor with the source; for an
            architecture target, also load it into the model on ``device`` (strict, assign)
            and run a forward pass on the example input it declares.
        byte_copy: copy unchanged tensors file to file without torch (``False`` forces the
            torch path; both give byte-identical files).
        source_sha256: the source's digest when the caller already knows it (the service
            hashes uploads as they stream in); otherwise it is computed, in a thread beside
            the copy. A dry run never hashes: planning reads headers only.
        source_architecture: the architecture the source checkpoint belongs to (see
            ``app.engine.architectures.bind_architecture``). With an architecture target and
            a recipe that only renamed keys, both models run and must agree (allclose).

    Returns:
        The result. A policy refusal gives ``ok=False`` and a report, and writes nothing.

    Raises:
        GraftError: bad or unsafe input, an invalid recipe or target.
    """
    fmt, dtype, device = options.format, options.dtype, options.device
    max_shard_size, verify, byte_copy = options.max_shard_size, options.verify, options.byte_copy
    strip = recipe.source.strip_prefixes
    with open_source(source, entry=recipe.source.entry, strip_prefixes=strip) as src:
        if progress:
            progress("plan", 0.0)
        plan = build_plan(src, target, recipe, dtype=dtype)
        manifest = build_manifest(plan, target, recipe)
        if dry_run or not plan.ok or output is None:
            report = build_report(plan, src, target, execution=None, source_sha256=source_sha256)
            return ConversionResult(report["ok"] and plan.ok, report, manifest, None)
        with ThreadPoolExecutor(max_workers=1) as pool:
            hashing = pool.submit(src.sha256) if source_sha256 is None else None
            result = _write(
                src, target, recipe, plan, manifest, Path(output),
                hashing.result if hashing else lambda: source_sha256 or "",
                fmt=fmt, device=device, progress=progress, max_shard_size=max_shard_size,
                verify=verify, byte_copy=byte_copy,
            )  # fmt: skip
        _verify_on_model(result, src, target, verify, device, source_architecture, progress)
        return result


# Verification on the model (architecture targets) ----------------------------------------


def _verify_on_model(
    result: ConversionResult,
    src: Source,
    target: Target,
    verify: bool,
    device: str,
    source_architecture: BoundArchitecture | None,
    progress: Callable[[str, float], None] | None,
) -> None:
    """Run the converted weights in the target's model (see ``app.engine.verify_model``)."""
    if not verify or target.architecture is None or result.output is None:
        return
    from app.engine.verify_model import verify_on_model

    if progress:
        progress("verify-model", 0.0)
    outcome = verify_on_model(
        result.output, target.architecture, result.report, device=resolve_device(device),
        source=src,
        source_architecture=source_architecture,
    )  # fmt: skip
    outcome.apply(result.report)
    result.ok = bool(result.report["ok"])
    if progress:
        progress("verify-model", 1.0)


def _write(
    src: Source,
    target: Target,
    recipe: Recipe,
    plan: Plan,
    manifest: dict[str, Any],
    output: Path,
    source_sha256: Callable[[], str],
    *,
    fmt: OutputFormat,
    device: str,
    progress: Callable[[str, float], None] | None,
    max_shard_size: int | None,
    verify: bool,
    byte_copy: bool,
) -> ConversionResult:
    # The header comes before the data, so the metadata is written with placeholders of the
    # final lengths and rewritten once the digests are known.
    base_metadata = {
        "graft.version": __version__,
        "graft.source_sha256": DIGEST_PLACEHOLDER,
        "graft.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True),
        "graft.report_sha256": DIGEST_PLACEHOLDER,
    }

    def finalize(execution: Execution) -> dict[str, str]:
        partial = build_report(plan, src, target, execution=execution, source_sha256=None)
        digest = entries_digest(partial["entries"], partial["unused"])
        return {
            **base_metadata,
            "graft.source_sha256": source_sha256(),
            "graft.report_sha256": digest,
        }

    execution = execute_plan(
        plan,
        src,
        target,
        output,
        fmt=fmt,
        seed=recipe.seed,
        metadata=base_metadata,
        finalize_metadata=finalize,
        device=device,
        progress=progress,
        byte_copy=byte_copy,
        max_shard_size=max_shard_size,
        verify=verify,
    )
    report = build_report(plan, src, target, execution=execution, source_sha256=source_sha256())
    report["output"] = {
        "format": fmt,
        "files": execution.files,
        "copied": execution.copied,
        "materialised": execution.materialised,
        "report_sha256": entries_digest(report["entries"], report["unused"]),
    }
    return ConversionResult(report["ok"], report, manifest, output)
