"""``graft recipe …``: commands on recipes themselves (today: ``invert``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from app.cli.help_format import GraftCommand, GraftGroup

__all__ = ["recipe_cli"]

recipe_cli = typer.Typer(
    cls=GraftGroup, help="Work with recipes: invert one.", no_args_is_help=True
)


@recipe_cli.command(cls=GraftCommand)
def invert(
    recipe: Annotated[Path, typer.Argument(help="The recipe (.yaml, .yml or .json).")],
    source: Annotated[
        Path | None,
        typer.Option(
            "--source",
            help="The source the recipe is for: proves the renames one-to-one on its keys and "
            "supplies the shapes reshape and unequal merges started from.",
        ),
    ] = None,
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the reverse recipe here.")
    ] = None,
) -> None:
    """Write the reverse of an invertible recipe (renames, split, merge, transpose, reshape)."""
    import yaml

    from app.engine.invert import invert_recipe
    from app.engine.readers import open_source
    from app.engine.recipe import load_recipe

    parsed = load_recipe(recipe)
    tensors = None
    if source is not None:
        strip = parsed.source.strip_prefixes
        with open_source(source, entry=parsed.source.entry, strip_prefixes=strip) as src:
            tensors = dict(src.tensors)
    inversion = invert_recipe(parsed, source=tensors)
    as_json = output is not None and output.suffix.lower() == ".json"
    text = (
        json.dumps(inversion.recipe, indent=2) + "\n"
        if as_json
        else yaml.safe_dump(inversion.recipe, sort_keys=False, width=100)
    )
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
    for note in inversion.notes:
        typer.echo(f"graft: {note}", err=True)
