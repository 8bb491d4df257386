"""How ``graft --help`` shows options: a flag gets no type label.

A flag (``--json``, ``--verify/--no-verify``, ``--help``) takes no value, so the ``<bool>``
Typer prints beside every option's name only misleads. Typer draws the label from an
option's metavar, and takes the command and group classes from ``cls=``: these two classes
give each flag an empty metavar as their help is drawn, and change nothing else.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup, TyperOption

__all__ = ["GraftCommand", "GraftGroup"]


def _untyped_flags(params: list[Any]) -> list[Any]:
    for param in params:
        if isinstance(param, TyperOption) and param.is_flag and param.metavar is None:
            param.metavar = ""
    return params


class GraftCommand(TyperCommand):
    """A ``graft`` command whose help shows no type beside a flag."""

    def get_params(self, ctx: Any) -> list[Any]:  # Typer's own (vendored) click types
        """The command's parameters, the help option included, flags with an empty metavar."""
        return _untyped_flags(super().get_params(ctx))


class GraftGroup(TyperGroup):
    """A ``graft`` command group whose help shows no type beside a flag."""

    def get_params(self, ctx: Any) -> list[Any]:  # Typer's own (vendored) click types
        """The group's parameters, the help option included, flags with an empty metavar."""
        return _untyped_flags(super().get_params(ctx))
