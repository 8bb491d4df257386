"""``graft plan`` and ``graft convert``: a conversion in this process, through the one seam."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, cast

import typer

from app.cli.options import (
    JsonOpt,
    RecipeOpt,
    TargetKwargsOpt,
    json_object,
    target_spec,
)
from app.cli.parity import (
    InputsOpt,
    ReferenceKwargsOpt,
    ReferenceOpt,
    TargetModuleKwargsOpt,
    TargetModuleOpt,
    parity_spec,
)
from app.cli.progress import TerminalProgress
from app.cli.sizes import parse_size
from app.cli.sources import SOURCES, TARGET, resolve_sources
from app.cli.verify import SignKeyOpt, attest
from app.engine.options import OutputFormat, WriteOptions, format_for_path

__all__ = ["convert", "plan"]


@dataclass(frozen=True)
class _RunOptions:
    """What one ``plan`` or ``convert`` invocation asks for, parsed from its options.

    Attributes:
        source: The sources as typed: one path, or NAME=PATH each (none: the recipe's).
        target: The target as typed (``arch:NAME``, a skeleton file, ...).
        recipe: The recipe file, or None for the default.
        output: Where to write the weights (None for a dry run).
        report_path: Where to also write the JSON report, if anywhere.
        json_: Print the report as JSON rather than text.
        target_kwargs: The target's JSON kwargs, as typed.
        dry_run: Plan from headers alone; write nothing.
        options: The write options.
        source_architecture: The source's architecture spec, for a parity check.
    """

    source: list[str] | None
    target: str
    recipe: Path | None
    output: Path | None
    report_path: Path | None
    json_: bool
    target_kwargs: str | None
    dry_run: bool
    options: WriteOptions
    source_architecture: Any = None


def _run(run: _RunOptions) -> Any:
    from app.config import get_settings
    from app.engine.recipe import load_recipe
    from app.engine.report import Report, render_text
    from app.services.conversion import ConversionRequest, PathSink, run_conversion

    parsed = load_recipe(run.recipe)
    source, sources = resolve_sources(run.source, parsed, run.recipe)
    spec, files = target_spec(run.target, run.target_kwargs)
    request = ConversionRequest(
        source=source,
        sources=sources,
        target=spec,
        target_files=files,
        recipe=parsed,
        options=run.options,
        dry_run=run.dry_run,
        source_architecture=run.source_architecture,
        architectures=get_settings().architectures,
    )
    with TerminalProgress() as progress:
        # In this process: the CLI reads the user's own files, with the restricted reader.
        result = run_conversion(
            request, PathSink(run.output, run.report_path), limits=None, progress=progress
        )
    text = json.dumps(result.report, indent=2) + "\n" if run.json_ else render_text(result.report)
    typer.echo(text, nl=False)
    warnings = Report.from_json(result.report).warnings
    # The loud ones first: a conversion that fed little of the target, then rules that missed
    # or never acted.
    for kinds in (("nothing_loaded", "low_coverage"), ("unmatched", "unapplied")):
        for warning in warnings:
            if warning.kind in kinds:
                typer.echo(f"graft: WARNING: {warning}", err=True)
    if not result.ok:
        for error in result.report.get("errors", []):
            typer.echo(f"graft: refused: {error}", err=True)
        from app.engine.errors import PolicyError

        refusal = PolicyError.of_report(result.report)
        typer.echo(
            f"graft: refused by the recipe's policy ({refusal.type}; see errors above)", err=True
        )
        raise typer.Exit(1)
    return result


# Old-style, as SOURCES: a required option after the optional SOURCE arguments.
_OUTPUT: Any = typer.Option(..., "-o", "--output", help="Where to write the weights.")

MaxShardOpt = Annotated[
    str | None,
    typer.Option(
        "--max-shard-size",
        help="Write Hugging Face shards of at most this size (e.g. 5GB, 500MiB) into "
        "the folder -o.",
    ),
]
VerifyOpt = Annotated[
    bool,
    typer.Option(
        "--verify/--no-verify",
        help="Digest every tensor and re-read the output to compare (default). "
        "--no-verify takes no digests and no source identity: the fastest copy.",
    ),
]
Sha256Opt = Annotated[
    bool,
    typer.Option(
        "--sha256",
        help="Identify the source by its sha256 (one more pass, on one core) instead of "
        "its BLAKE3 (b3sum), the default.",
    ),
]
FolderOpt = Annotated[
    bool,
    typer.Option(
        "--folder",
        help="Write -o as a model folder, as save_pretrained does: model.safetensors (or "
        "shards), and config.json when the target architecture declares one (the default "
        "when -o is a folder).",
    ),
]
ShardWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--shard-workers",
        min=1,
        help="Output shards written (and verified) side by side in a rename-only "
        "conversion (default: one per CPU, at most 8). The files are the same.",
    ),
]
SourceArchOpt = Annotated[
    str | None,
    typer.Option(
        "--source-arch",
        help="The architecture the source belongs to: with an arch: target and a "
        "rename-only recipe, both models run and must agree.",
    ),
]


def _source_architecture(name: str | None, kwargs: str | None) -> Any:
    """``--source-arch`` and ``--source-kwargs`` as a target spec (None without them)."""
    from app.engine.target_spec import parse_target_spec

    if name is not None:
        parsed = json_object(kwargs, "--source-kwargs")
        return parse_target_spec({"architecture": name, "kwargs": parsed})
    if kwargs is not None:
        raise typer.BadParameter("--source-kwargs needs --source-arch")
    return None


def _output_format(output: Path, fmt: str | None) -> OutputFormat:
    """``--format``, or what ``-o``'s name asks for; a contradiction is refused (exit 2)."""
    if fmt not in (None, "safetensors", "torch", "dcp"):
        raise typer.BadParameter("--format is safetensors, torch or dcp")
    named = format_for_path(output)
    if fmt is not None and named is not None and fmt != named:
        typer.echo(
            f"graft: error: --format {fmt} contradicts -o {output.name} (a {named} name): "
            "drop --format or rename the output",
            err=True,
        )
        raise typer.Exit(2)
    return cast(OutputFormat, fmt or named or "safetensors")


def plan(
    source: list[str] | None = SOURCES,
    target: str = TARGET,
    recipe: RecipeOpt = None,
    json_: JsonOpt = False,
    target_kwargs: TargetKwargsOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Also write the JSON report here.")
    ] = None,
) -> None:
    """Dry run: the report of what convert would do, from headers alone."""
    _run(
        _RunOptions(
            source=source,
            target=target,
            recipe=recipe,
            output=None,
            report_path=report,
            json_=json_,
            target_kwargs=target_kwargs,
            dry_run=True,
            options=WriteOptions(),
        )
    )


def convert(
    source: list[str] | None = SOURCES,
    target: str = TARGET,
    output: Path = _OUTPUT,
    recipe: RecipeOpt = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="Write the JSON report here.")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="safetensors, torch or dcp (a folder) (default: from -o's name: "
            ".pt/.pth/.bin torch, else safetensors).",
        ),
    ] = None,
    json_: JsonOpt = False,
    target_kwargs: TargetKwargsOpt = None,
    max_shard_size: MaxShardOpt = None,
    folder: FolderOpt = False,
    verify: VerifyOpt = True,
    sha256: Sha256Opt = False,
    shard_workers: ShardWorkersOpt = None,
    device: Annotated[
        str | None,
        typer.Option("--device", help="auto, cpu, cuda or cuda:N (default: GRAFT_DEVICE, auto)."),
    ] = None,
    source_arch: SourceArchOpt = None,
    source_kwargs: Annotated[
        str | None, typer.Option("--source-kwargs", help="JSON kwargs for --source-arch.")
    ] = None,
    reference: ReferenceOpt = None,
    reference_kwargs: ReferenceKwargsOpt = None,
    target_module: TargetModuleOpt = None,
    target_module_kwargs: TargetModuleKwargsOpt = None,
    inputs: InputsOpt = None,
    sign_key: SignKeyOpt = None,
) -> None:
    """Convert SOURCE into TARGET's layout, verify it, and report every tensor."""
    from app.config import get_settings
    from app.engine.devices import check_device

    out_format = _output_format(output, fmt)
    settings = get_settings()
    # Before any work: a missing GPU (--device or GRAFT_DEVICE) is bad input, exit 2.
    check_device(device or settings.device)
    source_architecture = _source_architecture(source_arch, source_kwargs)
    options = WriteOptions(
        format=out_format,
        device=device or settings.device,
        max_shard_size=parse_size(max_shard_size) if max_shard_size else None,
        folder=folder or output.is_dir(),
        verify=verify,
        shard_workers=shard_workers,
        # The cheapest honest identity: BLAKE3 runs on every core from the page cache the
        # copy just filled; --no-verify promises no pass over the data at all.
        source_digest="sha256" if sha256 else ("blake3" if verify else "none"),
        parity=parity_spec(
            reference, reference_kwargs, target_module, target_module_kwargs, inputs,
            architectures=settings.architectures,
        ),
    )  # fmt: skip
    result = _run(
        _RunOptions(
            source=source,
            target=target,
            recipe=recipe,
            output=output,
            report_path=report,
            json_=json_,
            target_kwargs=target_kwargs,
            dry_run=False,
            options=options,
            source_architecture=source_architecture,
        )
    )
    if result.weights is not None:
        attest(result.weights, result.report, recipe, sign_key, result.file_sha256)
