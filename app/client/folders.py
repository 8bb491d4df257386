"""What ``graft submit`` adds for several sources and folder outputs.

Several sources are given as ``NAME=PATH`` (or by the recipe's ``sources``, their paths
relative to the recipe file) and uploaded one by one; the job names them by their ids. A
folder output (``--folder``, ``--format dcp``) is published by the server as one zip, and
unpacked here into the folder ``-o`` names, refusing any member that would land outside it.
"""

from __future__ import annotations

import json
import re
import shutil
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

from app.client.errors import GraftClientError

__all__ = ["named_sources", "recipe_for_server", "unpack_folder"]

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$")


def _named(arg: str) -> tuple[str, str] | None:
    name, eq, path = arg.partition("=")
    if not eq or not _NAME.match(name) or Path(arg).exists():
        return None
    return name, path


def named_sources(
    args: list[str], recipe: dict[str, Any] | None, recipe_path: Path | None
) -> dict[str, str] | None:
    """Several sources by name (paths or URIs as given), or None for one plain source.

    Raises:
        GraftClientError: plain paths mixed with ``NAME=PATH``, or a source the recipe
            names with no path anywhere.
    """
    declared = (recipe or {}).get("sources") or {}
    if not args and not declared:
        raise GraftClientError("missing SOURCE (or a recipe whose `sources` give paths)")
    named = [_named(a) for a in args]
    if len(args) == 1 and named[0] is None and not declared:
        return None
    if any(n is None for n in named):
        raise GraftClientError("give one SOURCE, or every source as NAME=PATH")
    base = recipe_path.parent if recipe_path is not None else Path()
    sources: dict[str, str] = {}
    for name, spec in declared.items():
        path = spec if isinstance(spec, str) else (spec or {}).get("path")
        if path:
            sources[str(name)] = str(base / path)
    sources |= {name: path for name, path in (n for n in named if n is not None)}
    lacking = [str(n) for n in declared if n not in sources]
    if lacking or not sources:
        raise GraftClientError(
            f"no path for source {', '.join(lacking) or 'SOURCE'}: give NAME=PATH"
        )
    return sources


def recipe_for_server(
    recipe: dict[str, Any] | None, paths: dict[str, str] | None = None
) -> dict[str, Any] | None:
    """The recipe without the local paths of its ``sources`` (the job names uploads), and
    with a ``lora`` step's ``config`` read from the adapter's folder (``adapter_config.json``:
    the upload holds the adapter's weights only).

    Raises:
        GraftClientError: the adapter's config is not JSON.
    """
    if not recipe or not isinstance(recipe.get("sources"), dict):
        return recipe
    sources = {
        name: {k: v for k, v in spec.items() if k != "path"} if isinstance(spec, dict) else {}
        for name, spec in recipe["sources"].items()
    }
    out = {**recipe, "sources": sources}
    step = recipe.get("lora")
    if isinstance(step, dict) and "config" not in step and paths and step.get("merge") in paths:
        folder = Path(paths[str(step["merge"])])
        config = (folder if folder.is_dir() else folder.parent) / "adapter_config.json"
        if config.is_file():
            try:
                out["lora"] = {**step, "config": json.loads(config.read_text())}
            except ValueError as exc:
                raise GraftClientError(f"{config} is not JSON: {exc}") from None
    return out


def unpack_folder(archive: Path, folder: Path) -> None:
    """Unpack the published zip into ``folder`` (replaced), member by member.

    Raises:
        GraftClientError: a member's name is absolute or climbs out of the folder.
    """
    if folder.exists():
        shutil.rmtree(folder) if folder.is_dir() else folder.unlink()
    folder.mkdir(parents=True)
    with zipfile.ZipFile(archive) as zipped:
        for member in zipped.infolist():
            name = PurePosixPath(member.filename)
            if name.is_absolute() or ".." in name.parts or member.is_dir():
                if member.is_dir():
                    continue
                raise GraftClientError(f"the server's zip holds an unsafe name {member.filename!r}")
            path = folder.joinpath(*name.parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as src, path.open("wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    archive.unlink()
