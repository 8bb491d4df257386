"""The arguments and options several ``graft`` commands share, and how their text is read."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "EntryOpt", "JsonOpt", "RecipeOpt", "SourceArg", "TargetArg", "TargetKwargsOpt",
    "json_object", "source_arg", "target_spec",
]  # fmt: skip

SourceArg = Annotated[
    list[Path],
    typer.Argument(help="Checkpoint file, sharded-set directory or index.json (or its files)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of the grouped view.")]
EntryOpt = Annotated[str, typer.Option("--entry", help="Weights entry: auto or a dotted path.")]


def source_arg(paths: list[Path]) -> Path | list[Path]:
    """One SOURCE path as itself, several (a sharded set's files) as the list."""
    return paths[0] if len(paths) == 1 else paths


RecipeOpt = Annotated[
    Path | None,
    typer.Option("-r", "--recipe", help="Recipe file (YAML or JSON), or builtin:NAME."),
]
TargetKwargsOpt = Annotated[
    str | None, typer.Option("--target-kwargs", help="JSON kwargs for an arch: target.")
]
TargetArg = Annotated[
    str, typer.Argument(help="Template checkpoint, .json skeleton, or arch:NAME.")
]


def json_object(text: str | None, option: str) -> dict[str, Any]:
    """An option's JSON object text, parsed (``{}`` when the option is absent).

    Args:
        text: The option's value, or None when it was not given.
        option: How the error names the option (``--source-kwargs``).

    Raises:
        InvalidTargetError: The text is not a JSON object.
    """
    from app.engine.errors import InvalidTargetError

    try:
        parsed = json.loads(text) if text is not None else {}
    except ValueError:
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidTargetError(f"{option} must be a JSON object")
    return parsed


def target_spec(spec: str, kwargs: str | None) -> tuple[Any, list[Path]]:
    """The TARGET argument as a target spec, and a checkpoint target's files.

    Args:
        spec: A template checkpoint, a ``.json`` skeleton, or ``arch:NAME``.
        kwargs: ``--target-kwargs`` (JSON), for an ``arch:`` target only.
    """
    from app.engine.errors import InvalidTargetError
    from app.engine.target_spec import parse_target_spec, read_skeleton

    if spec.startswith("arch:"):
        parsed = json_object(kwargs, f"--target-kwargs for {spec}")
        return parse_target_spec({"architecture": spec.removeprefix("arch:"), "kwargs": parsed}), []
    if kwargs is not None:
        raise InvalidTargetError("--target-kwargs applies only to arch: targets")
    if not Path(spec).exists():
        _suggest_architecture(spec)
    if spec.endswith(".json") and not spec.endswith(".index.json"):
        return parse_target_spec({"skeleton": read_skeleton(spec)}), []
    return parse_target_spec({"checkpoint": spec}), [Path(spec)]


def _suggest_architecture(spec: str) -> None:
    """A TARGET that is no file but names a registered architecture: the ``arch:`` it meant.

    Raises:
        InvalidTargetError: ``spec`` is a registered architecture's name.
    """
    from app.config import get_settings
    from app.engine.architectures import load_registry
    from app.engine.errors import InvalidTargetError

    if spec in load_registry(get_settings().architectures):
        raise InvalidTargetError(f"cannot read {spec}: no such file; did you mean `arch:{spec}`?")
