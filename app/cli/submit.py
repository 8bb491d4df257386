"""``graft submit``: the conversion on a Graft server, with live progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from app.cli.options import RecipeOpt, TargetKwargsOpt, json_object
from app.cli.progress import TerminalProgress
from app.cli.sources import TARGET

__all__ = ["submit"]


# Old-style defaults, as `graft convert`'s: an optional variadic SOURCE before TARGET.
_SOURCES: Any = typer.Argument(
    None,
    help="A checkpoint file, a sharded set's folder, or a models:/, runs:/, https:// or s3:// "
    "URI the server fetches; or several as NAME=PATH (none: the recipe's `sources`).",
    show_default=False,
)


def submit(
    source: list[str] | None = _SOURCES,
    target: str = TARGET,
    recipe: RecipeOpt = None,
    server: Annotated[
        str, typer.Option("--server", envvar="GRAFT_SERVER", help="The Graft server's URL.")
    ] = "http://127.0.0.1:8000",
    key: Annotated[
        str | None, typer.Option("--key", envvar="GRAFT_API_KEY", help="An API key.")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "-o",
            "--output",
            help="Where to write the weights (.pt/.pth/.bin: torch, else safetensors).",
        ),
    ] = None,
    register: Annotated[
        str | None,
        typer.Option("--register", help="mlflow:NAME[@ALIAS]: register the result in MLflow."),
    ] = None,
    target_kwargs: TargetKwargsOpt = None,
    fmt: Annotated[
        str | None,
        typer.Option("--format", help="safetensors, torch or dcp (a folder, unpacked into -o)."),
    ] = None,
    folder: Annotated[
        bool,
        typer.Option(
            "--folder",
            help="Write -o as a model folder (config.json beside the weights where the "
            "target declares one).",
        ),
    ] = False,
) -> None:
    """Run the conversion on a Graft server: uploads only what it lacks, shows live progress,
    downloads the weights plus OUT's stem + .report.json and .manifest.json."""
    from app.client import GraftClient
    from app.client.submit import SubmitOutput
    from app.client.submit import submit as run_submit

    kwargs = json_object(target_kwargs, f"--target-kwargs for {target}") if target_kwargs else None
    with GraftClient(server, api_key=key) as client, TerminalProgress() as progress:
        result = run_submit(
            client, source or [], target, recipe=recipe, target_kwargs=kwargs,
            output=SubmitOutput(output, fmt, folder), register=register, progress=progress.show,
        )  # fmt: skip
    job = result.job or {}
    if job:
        typer.echo(f"job {job['id']}: {job['status']}")
    for path in result.files:
        typer.echo(f"wrote {path}")
    if result.exit_code:
        typer.echo(f"graft: error: {result.message}", err=True)
        raise typer.Exit(result.exit_code)
