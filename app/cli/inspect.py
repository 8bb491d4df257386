"""``graft inspect``, ``graft skeleton`` and ``graft architectures``: look at a checkpoint,
a module, or the architectures ``arch:NAME`` can name."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated

import typer

from app.cli.options import EntryOpt, JsonOpt, SourceArg, source_arg
from app.cli.render import render_inspect

__all__ = ["architectures", "inspect", "skeleton"]


def inspect(source: SourceArg, json_: JsonOpt = False, entry: EntryOpt = "auto") -> None:
    """Show formats, entry, keys, shapes, dtypes, parameters vs buffers and totals."""
    from app.engine.readers import inspect_source

    summary = inspect_source(source_arg(source), entry=entry)
    typer.echo(json.dumps(summary, indent=2) if json_ else render_inspect(summary))


def skeleton(
    factory: Annotated[
        str, typer.Argument(help="MODULE:FACTORY, an importable nn.Module factory.")
    ],
    kwargs: Annotated[str, typer.Option("--kwargs", help="JSON kwargs for the factory.")] = "{}",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here, not stdout.")
    ] = None,
) -> None:
    """Describe an importable nn.Module as a graft.skeleton/v1 (built on the meta device)."""
    import importlib

    import torch

    from app.engine.errors import InvalidTargetError
    from app.engine.target import skeleton_from_module

    module_name, _, attr = factory.partition(":")
    if not module_name or not attr:
        raise InvalidTargetError(
            f"{factory!r}: write MODULE:FACTORY, e.g. torchvision.models:resnet18"
        )
    try:
        fn = getattr(importlib.import_module(module_name), attr)
        params = json.loads(kwargs)
    except (ImportError, AttributeError) as exc:
        raise InvalidTargetError(f"cannot import {factory}: {exc}") from None
    except ValueError:
        raise InvalidTargetError("--kwargs must be a JSON object") from None
    with torch.device("meta"):
        model = fn(**params)
    text = json.dumps(skeleton_from_module(model), indent=2) + "\n"
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)


_RST_LITERAL = re.compile(r"``([^`]+)``")


def architectures(json_: JsonOpt = False) -> None:
    """List the architectures arch:NAME targets can name, with their kwargs."""
    from app.config import get_settings
    from app.engine.architectures import describe_architectures

    listed = describe_architectures(get_settings().architectures)
    if json_:
        typer.echo(json.dumps(listed, indent=2))
        return
    for arch in listed:
        if not arch.get("available", True):
            typer.echo(f"{arch['name']}  ({arch['origin']}: {arch['ref']})  UNAVAILABLE")
            typer.echo(f"    {arch['error']}")
            continue
        kwargs = ", ".join(
            f"{name}={json.dumps(info['default'])}" if not info["required"] else name
            for name, info in arch["kwargs"].items()
        )
        typer.echo(f"{arch['name']}  ({arch['origin']}: {arch['ref']})")
        typer.echo(f"    kwargs: {kwargs or '-'}")
        if arch["description"]:
            # Docstrings are reStructuredText: ``name`` reads as plain name on a terminal.
            typer.echo("    " + _RST_LITERAL.sub(r"\1", arch["description"]))
