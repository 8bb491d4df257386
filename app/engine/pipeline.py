"""One conversion end to end: open, plan, write, verify, report. The engine's front door."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app import __version__
from app.engine.checkpoint import open_source
from app.engine.execute import DIGEST_PLACEHOLDER, Execution, OutputFormat, execute_plan
from app.engine.plan import build_plan
from app.engine.recipe import Recipe
from app.engine.report import build_manifest, build_report, entries_digest
from app.engine.target import Target

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
    fmt: OutputFormat = "safetensors",
    dtype: str | None = None,
    dry_run: bool = False,
    device: str = "cpu",
    progress: Callable[[str, float], None] | None = None,
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
        device: where shape ops run; the output is always written from the CPU.
        progress: called with (stage, fraction in 0..1).

    Returns:
        The result. A policy refusal gives ``ok=False`` and a report, and writes nothing.

    Raises:
        GraftError: bad or unsafe input, an invalid recipe or target.
    """
    strip = recipe.source.strip_prefixes
    with open_source(source, entry=recipe.source.entry, strip_prefixes=strip) as src:
        if progress:
            progress("plan", 0.0)
        plan = build_plan(src, target, recipe, dtype=dtype)
        manifest = build_manifest(plan, target, recipe)
        sha = src.sha256()
        if dry_run or not plan.ok or output is None:
            report = build_report(plan, src, target, execution=None, source_sha256=sha)
            return ConversionResult(report["ok"] and plan.ok, report, manifest, None)
        base_metadata = {
            "graft.version": __version__,
            "graft.source_sha256": sha,
            "graft.recipe": json.dumps(recipe.model_dump(mode="json"), sort_keys=True),
            "graft.report_sha256": DIGEST_PLACEHOLDER,
        }

        def finalize(execution: Execution) -> dict[str, str]:
            partial = build_report(plan, src, target, execution=execution, source_sha256=sha)
            digest = entries_digest(partial["entries"], partial["unused"])
            return {**base_metadata, "graft.report_sha256": digest}

        execution = execute_plan(
            plan,
            src,
            target,
            Path(output),
            fmt=fmt,
            seed=recipe.seed,
            metadata=base_metadata,
            finalize_metadata=finalize,
            device=device,
            progress=progress,
        )
        report = build_report(plan, src, target, execution=execution, source_sha256=sha)
        report["output"] = {
            "format": fmt,
            "report_sha256": entries_digest(report["entries"], report["unused"]),
        }
        return ConversionResult(report["ok"], report, manifest, Path(output))
