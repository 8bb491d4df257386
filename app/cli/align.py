"""``graft align`` (write the recipe from the two key lists) and ``graft recipes`` (built-ins).

``graft align SOURCE TARGET`` runs the user's recipe (``-r``) on the headers, matches what it
leaves over (SPEC §2.2) and writes the complete recipe: YAML with ``# confidence`` comments, or
JSON with ``x-confidence`` fields (``-o x.json`` or ``--json``). Exit 0 when every target key
is fed, 1 when some are unresolved (the recipe is written all the same).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register"]

_SHOWN = 20


def _align(
    source: Annotated[Path, typer.Argument(help="Source checkpoint or sharded set.")],
    target: Annotated[
        str, typer.Argument(help="Template checkpoint, .json skeleton, or arch:NAME.")
    ],
    recipe: Annotated[
        Path | None,
        typer.Option("-r", "--recipe", help="Rules to apply first (a file or builtin:NAME)."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Write the recipe here (.yaml/.yml or .json)."),
    ] = None,
    min_confidence: Annotated[
        float | None,
        typer.Option(
            "--min-confidence",
            min=0.0,
            max=1.0,
            help="Apply a match only at this confidence or above (default: the recipe's "
            "align_min_confidence, 0.9).",
        ),
    ] = None,
    json_: Annotated[
        bool, typer.Option("--json", help="Print {recipe, matches, unresolved} as JSON.")
    ] = False,
    target_kwargs: Annotated[
        str | None, typer.Option("--target-kwargs", help="JSON kwargs for an arch: target.")
    ] = None,
) -> None:
    """Write the recipe that feeds TARGET from SOURCE, saying how sure it is of each rule."""
    from app.cli.options import target_spec
    from app.config import get_settings
    from app.engine.align import align, align_document, render_json, render_yaml
    from app.engine.readers import open_source
    from app.engine.recipe import load_recipe
    from app.engine.target import Target

    parsed = load_recipe(recipe)
    spec, files = target_spec(target, target_kwargs)
    strip = parsed.source.strip_prefixes
    with (
        open_source(source, entry=parsed.source.entry, strip_prefixes=strip) as src,
        Target.from_spec(
            spec, files=files or None, architectures=get_settings().architectures
        ) as tgt,
    ):
        result = align(src.tensors, tgt.tensors, parsed, min_confidence=min_confidence)
    header = f"graft align {source.name} {target}"
    as_json = output is not None and output.suffix.lower() == ".json"
    text = render_json(result) if as_json else render_yaml(result, header=header)
    if output is not None:
        output.write_text(text, encoding="utf-8")
    if json_:
        typer.echo(json.dumps(align_document(result), indent=2))
    elif output is None:
        typer.echo(text, nl=False)
    _summary(result.fed, result.total, result.unresolved, result.warnings)
    if not result.complete:
        raise typer.Exit(1)


def _summary(fed: int, total: int, unresolved: list[Any], warnings: list[str]) -> None:
    typer.echo(f"graft: {fed} of {total} target keys fed; {len(unresolved)} unresolved", err=True)
    for m in unresolved[:_SHOWN]:
        best = ", ".join(f"{c.source} ({c.confidence:.2f})" for c in m.candidates[:3]) or "none"
        tie = " TIE" if m.ambiguous else ""
        typer.echo(f"  ? {m.target}{tie} <- {best}", err=True)
    if len(unresolved) > _SHOWN:
        typer.echo(f"  … and {len(unresolved) - _SHOWN} more (see x-unresolved)", err=True)
    for warning in warnings:
        typer.echo(f"graft: WARNING: {warning}", err=True)


def _recipes(
    json_: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List the built-in recipes (use one with -r builtin:NAME)."""
    from app.engine.align import list_builtins

    listed = [
        {"name": b.name, "version": b.version, "description": b.description}
        for b in list_builtins()
    ]
    if json_:
        typer.echo(json.dumps(listed, indent=2))
        return
    for item in listed:
        typer.echo(f"builtin:{item['name']}  (v{item['version']})")
        typer.echo(f"    {item['description']}")


def register(app: typer.Typer) -> None:
    """Add ``graft align`` and ``graft recipes`` to the ``graft`` command."""
    app.command("align")(_align)
    app.command("recipes")(_recipes)
