"""The ``graft convert`` parity options (SPEC §3.2), parsed into a ``ParitySpec``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from app.cli.options import json_object

if TYPE_CHECKING:
    from app.engine.parity_models import ParitySpec

__all__ = [
    "InputsOpt",
    "ReferenceKwargsOpt",
    "ReferenceOpt",
    "TargetModuleKwargsOpt",
    "TargetModuleOpt",
    "parity_spec",
]

ReferenceOpt = Annotated[
    str | None,
    typer.Option(
        "--reference",
        help="Parity: the source's model, arch:NAME or MODULE:FACTORY; both models run "
        "and the first module that diverges is named.",
    ),
]
ReferenceKwargsOpt = Annotated[
    str | None, typer.Option("--reference-kwargs", help="JSON kwargs for --reference.")
]
TargetModuleOpt = Annotated[
    str | None,
    typer.Option(
        "--target-module",
        help="Parity: the target's model for skeleton and template targets "
        "(arch:NAME or MODULE:FACTORY).",
    ),
]
TargetModuleKwargsOpt = Annotated[
    str | None, typer.Option("--target-module-kwargs", help="JSON kwargs for --target-module.")
]
InputsOpt = Annotated[
    str | None,
    typer.Option(
        "--inputs",
        help='Parity inputs, JSON or a JSON file: [{"shape": [2, 16], "dtype": "int64", '
        '"high": 30522}]; default: derived from the first layer.',
    ),
]


def _object(text: str | None, option: str) -> dict[str, Any]:
    """``options.json_object``, refused as a usage error like the other parity options."""
    from app.engine.errors import InvalidTargetError

    try:
        return json_object(text, option)
    except InvalidTargetError as exc:
        raise typer.BadParameter(str(exc)) from None


def _inputs(text: str) -> list[Any]:
    """``--inputs``: JSON, or the path of a JSON file."""
    raw = Path(text).read_text() if not text.lstrip().startswith("[") else text
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = None
    if not isinstance(parsed, list):
        raise typer.BadParameter('--inputs must be a JSON list, e.g. [{"shape": [2, 3, 224, 224]}]')
    return parsed


def parity_spec(
    reference: str | None,
    reference_kwargs: str | None,
    target_module: str | None,
    target_module_kwargs: str | None,
    inputs: str | None,
    *,
    architectures: Sequence[tuple[str, str, str]],
) -> ParitySpec | None:
    """The parity request of ``graft convert``, or ``None`` without ``--reference``.

    The CLI runs on the user's own machine, so ``MODULE:FACTORY`` may be imported here.
    """
    from pydantic import ValidationError

    from app.engine.parity_models import ParitySpec

    if reference is None:
        given = (reference_kwargs, target_module, target_module_kwargs, inputs)
        if any(v is not None for v in given):
            raise typer.BadParameter(
                "--reference-kwargs, --target-module and --inputs need --reference"
            )
        return None
    try:
        return ParitySpec(
            reference=reference,
            reference_kwargs=_object(reference_kwargs, "--reference-kwargs"),
            target_module=target_module,
            target_module_kwargs=_object(target_module_kwargs, "--target-module-kwargs"),
            inputs=_inputs(inputs) if inputs is not None else None,
            allow_imports=True,
            architectures=tuple(architectures),
        )
    except ValidationError as exc:
        raise typer.BadParameter(f"parity options: {exc.errors()[0]['msg']}") from None
