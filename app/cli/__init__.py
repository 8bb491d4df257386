"""The ``graft`` command. The only place that prints: the engine returns data, this renders it.

One module per command group: ``inspect`` (inspect, skeleton, architectures), ``convert``
(plan, convert), ``submit``, ``serve`` (serve, worker), ``keys``, ``recipe`` and ``lora``;
the shared options in ``options``, the views in ``render``, the progress bar in ``progress``.
Heavy imports (torch, the engine) happen inside commands so ``graft --help`` stays fast.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from app.cli import convert, inspect, serve, submit
from app.cli.align import register as register_align
from app.cli.help_format import GraftCommand, GraftGroup
from app.cli.keys import keys_cli
from app.cli.lora import lora_cli
from app.cli.recipe import recipe_cli
from app.cli.verify import register as register_verify

__all__ = ["cli", "main"]

cli = typer.Typer(
    cls=GraftGroup,
    name="graft",
    help="Transplant pretrained PyTorch weights into a different architecture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from app import __version__

        typer.echo(f"graft {__version__}")
        raise typer.Exit()


@cli.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Transplant pretrained PyTorch weights into a different architecture."""


# In the order `graft --help` lists them.
for _command in (
    inspect.inspect,
    convert.plan,
    convert.convert,
    inspect.skeleton,
    inspect.architectures,
    submit.submit,
    serve.serve,
    serve.worker,
):
    cli.command(cls=GraftCommand)(_command)
cli.add_typer(keys_cli, name="keys")
cli.add_typer(recipe_cli, name="recipe")
register_align(cli)
register_verify(cli)
cli.add_typer(lora_cli, name="lora")


def main() -> None:
    """Console-script entry point: known errors become one line on stderr and an exit code."""
    from app.errors import GraftError

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
