"""``graft submit``: the conversion on a Graft server, with live progress."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.options import RecipeOpt, TargetArg, TargetKwargsOpt, json_object
from app.cli.progress import TerminalProgress

__all__ = ["submit"]


def submit(
    source: Annotated[
        str,
        typer.Argument(
            help="A checkpoint file, a sharded set's folder, or a models:/, runs:/, "
            "https:// or s3:// URI the server fetches."
        ),
    ],
    target: TargetArg,
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
) -> None:
    """Run the conversion on a Graft server: uploads only what it lacks, shows live progress,
    downloads the weights plus OUT's stem + .report.json and .manifest.json."""
    from app.client import GraftClient
    from app.client.submit import submit as run_submit

    kwargs = json_object(target_kwargs, f"--target-kwargs for {target}") if target_kwargs else None
    with GraftClient(server, api_key=key) as client, TerminalProgress() as progress:
        result = run_submit(
            client, source, target, recipe=recipe, target_kwargs=kwargs, output=output,
            register=register, progress=progress.show,
        )  # fmt: skip
    job = result.job or {}
    if job:
        typer.echo(f"job {job['id']}: {job['status']}")
    for path in result.files:
        typer.echo(f"wrote {path}")
    if result.exit_code:
        typer.echo(f"graft: error: {result.message}", err=True)
        raise typer.Exit(result.exit_code)
