"""The built-in recipes (SPEC §2.2): listed and read, for ``GET /v1/recipes``.

They are data files shipped with Graft (``app/engine/align/builtin``), never uploads, so
the API process reads them itself.
"""

from __future__ import annotations

from typing import Any

import yaml

from app.engine.align.builtins import BUILTIN_PREFIX, Builtin, builtin_path, list_builtins
from app.services.errors import NotFoundError

__all__ = ["get_recipe", "list_recipes"]


def _summary(builtin: Builtin) -> dict[str, Any]:
    return {
        "name": builtin.name,
        "version": builtin.version,
        "description": builtin.description,
        "use": f"{BUILTIN_PREFIX}{builtin.name}",
    }


def list_recipes() -> list[dict[str, Any]]:
    """Every built-in recipe: name, version, description, and how a job names it."""
    return [_summary(b) for b in list_builtins()]


def get_recipe(name: str) -> dict[str, Any]:
    """One built-in recipe: its summary and the recipe itself (``recipe``, as data).

    Args:
        name: ``NAME`` or ``builtin:NAME``.

    Raises:
        NotFoundError: no built-in of that name (the message lists those there are).
    """
    try:
        path = builtin_path(name)
    except LookupError as exc:
        raise NotFoundError(str(exc)) from None
    builtin = next(b for b in list_builtins() if b.path == path)
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return _summary(builtin) | {"recipe": document}
