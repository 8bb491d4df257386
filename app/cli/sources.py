"""The sources of ``graft plan`` and ``graft convert``: one path, or several as ``NAME=PATH``.

``graft convert a=gpt2-a b=gpt2-b arch:gpt2 -o out`` names two sources, whose keys the recipe
writes ``a:KEY`` and ``b:KEY``. With no source on the command line, the recipe's ``sources``
give them, their paths relative to the recipe file. A ``NAME=PATH`` on the command line wins
over the recipe's path for that name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer

from app.engine.recipe import Recipe
from app.engine.recipe.several import SOURCE_NAME

__all__ = ["SOURCES", "TARGET", "resolve_sources"]

# Old-style defaults: an optional variadic SOURCE before the required TARGET (as `cp`).
SOURCES: Any = typer.Argument(
    None,
    help="Source checkpoint or sharded set; or several as NAME=PATH (keys become NAME:KEY); "
    "none: the recipe's `sources`.",
    show_default=False,
)
TARGET: Any = typer.Argument(..., help="Template checkpoint, .json skeleton, or arch:NAME.")


def _named(arg: str) -> tuple[str, str] | None:
    name, eq, path = arg.partition("=")
    if not eq or not re.match(SOURCE_NAME, name) or Path(arg).exists():
        return None
    return name, path


def resolve_sources(
    args: list[str] | None, recipe: Recipe, recipe_path: Path | None
) -> tuple[list[Path], dict[str, list[Path]]]:
    """One source's paths, or several sources' by name (exactly one of the two is non-empty).

    Raises:
        typer.BadParameter: plain paths mixed with ``NAME=PATH``, a name given twice, or a
            source the recipe names with no path anywhere (exit 2).
    """
    args = args or []
    named = [_named(a) for a in args]
    if args and all(n is None for n in named) and not recipe.sources:
        return [Path(a) for a in args], {}
    if any(n is None for n in named):
        raise typer.BadParameter(
            "give one SOURCE, or every source as NAME=PATH "
            + (f"(the recipe names {', '.join(recipe.sources)})" if recipe.sources else "")
        )
    sources: dict[str, list[Path]] = {}
    base = recipe_path.parent if recipe_path is not None else Path()
    for name, spec in recipe.sources.items():
        if spec.path is not None:
            sources[name] = [base / spec.path]
    given: set[str] = set()
    for name, path in (n for n in named if n is not None):
        if name in given:
            raise typer.BadParameter(f"source {name!r} is given twice")
        given.add(name)
        sources[name] = [Path(path)]
    lacking = [name for name in recipe.sources if name not in sources]
    if lacking:
        raise typer.BadParameter(
            f"no path for source {', '.join(map(repr, lacking))}: give NAME=PATH or "
            "`path` in the recipe's `sources`"
        )
    if not sources:
        raise typer.BadParameter("missing SOURCE")
    return [], sources
