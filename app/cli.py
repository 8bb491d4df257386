"""The ``graft`` command. The only place that prints: the engine returns data, this renders it."""

from __future__ import annotations

import typer

__all__ = ["cli", "main"]

cli = typer.Typer(
    name="graft",
    help="Transplant pretrained PyTorch weights into a different architecture.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main() -> None:
    """Console-script entry point."""
    cli()


# --- service commands (serve, worker) ---
