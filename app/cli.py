"""The ``graft`` command. The only place that prints: the engine returns data, this renders it.

Heavy imports (torch, the engine) happen inside commands so ``graft --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="graft",
    help="Transplant pretrained PyTorch weights into a different architecture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@cli.callback()
def _root() -> None:
    """Transplant pretrained PyTorch weights into a different architecture."""


SourceArg = Annotated[
    list[Path],
    typer.Argument(help="Checkpoint file, sharded-set directory or index.json (or its files)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of the grouped view.")]
EntryOpt = Annotated[str, typer.Option("--entry", help="Weights entry: auto or a dotted path.")]


def _source_arg(paths: list[Path]) -> Path | list[Path]:
    return paths[0] if len(paths) == 1 else paths


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def _human_count(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _uniform(values: list[Any], many: str) -> str:
    distinct = {json.dumps(v) for v in values}
    return str(values[0]) if len(distinct) == 1 else f"{many} ({len(distinct)})"


def render_inspect(summary: dict[str, Any]) -> str:
    """The grouped human view of ``graft inspect``."""
    from app.engine.keys import group_keys

    totals = summary["totals"]
    lines = [
        f"source    {', '.join(Path(p).name for p in summary['paths'][:3])}"
        f"{' …' if len(summary['paths']) > 3 else ''}  ({summary['format']})",
        f"entry     {summary['entry'] or '(root: flat state dict)'}"
        + (f"   candidates: {', '.join(summary['candidates'])}" if summary["candidates"] else ""),
        f"prefix    stripped: {summary['stripped_prefix'] or '-'}"
        + (
            f"   shared by every key: {summary['common_prefix']}"
            + (" (Lightning)" if summary["lightning"] else "")
            if summary["common_prefix"]
            else ""
        ),
    ]
    if summary["ignored"]:
        ignored = ", ".join(f"{k} ({v})" for k, v in summary["ignored"].items())
        lines.append(f"ignored   {ignored}")
    params, buffers = totals["parameters"], totals["buffers"]
    lines.append(
        f"tensors   {totals['tensors']}  elements {_human_count(totals['elements'])}  "
        f"bytes {_human_bytes(totals['bytes'])}  "
        f"(parameters {params['tensors']} / {_human_count(params['elements'])}, "
        f"buffers {buffers['tensors']} / {_human_count(buffers['elements'])})"
    )
    dtypes = ", ".join(f"{d} {v['tensors']}" for d, v in totals["by_dtype"].items())
    lines += [f"dtypes    {dtypes}", ""]
    by_key = {t["key"]: t for t in summary["tensors"]}
    groups = group_keys(list(by_key))
    width = min(max((len(g.pattern) for g in groups), default=10), 70)
    lines.append(f"{'key':<{width}}  {'n':>4}  {'shape':<20} {'dtype':<9} kind")
    for group in groups:
        members = [by_key[k] for k in group.keys]
        shape = _uniform([m["shape"] for m in members], "shapes")
        dtype = _uniform([m["dtype"] for m in members], "dtypes")
        kind = _uniform([m["kind"] for m in members], "mixed")
        lines.append(f"{group.pattern:<{width}}  {len(members):>4}  {shape:<20} {dtype:<9} {kind}")
    return "\n".join(lines)


@cli.command()
def inspect(source: SourceArg, json_: JsonOpt = False, entry: EntryOpt = "auto") -> None:
    """Show formats, entry, keys, shapes, dtypes, parameters vs buffers and totals."""
    from app.engine.checkpoint import inspect_source

    summary = inspect_source(_source_arg(source), entry=entry)
    typer.echo(json.dumps(summary, indent=2) if json_ else render_inspect(summary))


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and an exit code."""
    from app.engine.errors import GraftError

    try:
        cli()
    except GraftError as exc:
        typer.echo(f"graft: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        typer.echo(f"graft: error: {exc.strerror}: {exc.filename}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


# --- service commands (serve, worker) ---
