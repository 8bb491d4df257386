"""The human views the CLI prints: the engine returns data, this renders it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["render_inspect"]


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


def _render_layout(layout: dict[str, Any]) -> str:
    """One line on a training checkpoint's layout: format, writers, chunks per tensor."""
    if layout["format"] == "deepspeed":
        version = f" v{layout['version']}" if layout.get("version") else ""
        return (
            f"layout    deepspeed{version}  ZeRO stage {layout['zero_stage']}  world size "
            f"{layout['world_size']}  TP {layout['tp_degree']}  PP {layout['pp_degree']}  "
            f"entry {layout['entry']}  frozen: {len(layout.get('frozen') or [])}  tied: "
            + (", ".join(f"{a} -> {n}" for a, n in (layout.get("tied") or {}).items()) or "-")
        )
    counts: dict[int, int] = {}
    for n in layout["chunks"].values():
        counts[n] = counts.get(n, 0) + 1
    chunks = ", ".join(f"{n} ({k} tensors)" for n, k in sorted(counts.items()))
    version = f" v{layout['version']}" if layout.get("version") else ""
    parallel = (
        f"  TP {layout['tensor_parallel']} x PP {layout['pipeline_parallel']}"
        f"  iteration {layout.get('iteration')}"
        if layout.get("tensor_parallel")
        else ""
    )
    return (
        f"layout    {layout['format']}{version}  world size {layout['world_size']} "
        f"({layout['files']} files){parallel}  chunks per tensor: {chunks or '-'}"
    )


def render_inspect(summary: dict[str, Any]) -> str:
    """The grouped human view of ``graft inspect``."""
    from app.engine.keys import group_tensors

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
    if summary.get("layout"):
        lines.append(_render_layout(summary["layout"]))
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
    # Keys are grouped within each (shape, dtype, kind), so every line states one shape;
    # columns are as wide as their widest cell, so long grouped keys never push them out.
    rows = group_tensors(summary["tensors"])
    width = max((len(r["pattern"]) for r in rows), default=3)
    shape_width = max((len(str(r["shape"])) for r in rows), default=5)
    count_width = max((len(str(len(r["keys"]))) for r in rows), default=1)
    lines.append(
        f"{'key':<{width}}  {'n':>{count_width}}  {'shape':<{shape_width}}  {'dtype':<9}  kind"
    )
    for r in rows:
        lines.append(
            f"{r['pattern']:<{width}}  {len(r['keys']):>{count_width}}  "
            f"{r['shape']!s:<{shape_width}}  {r['dtype']:<9}  {r['kind']}"
        )
    return "\n".join(lines)
