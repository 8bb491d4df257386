"""The published JSON Schemas (draft 2020-12) of Graft's documents, shipped as package data.

``report`` (``graft.report/v1``), ``skeleton`` (``graft.skeleton/v1``), ``manifest``
(``graft.manifest/v1``) and ``inspect`` (``graft.inspect/v1``). The service serves them at
``GET /v1/schemas/{name}``. Objects allow properties beyond the ones a schema lists, so a newer
Graft's additions validate against an older schema; every property listed is pinned.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Literal

__all__ = ["SCHEMA_NAMES", "SchemaName", "load_schema"]

SchemaName = Literal["report", "skeleton", "manifest", "inspect"]
SCHEMA_NAMES: tuple[SchemaName, ...] = ("report", "skeleton", "manifest", "inspect")


@functools.cache
def _text(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.json").read_text(encoding="utf-8")


def load_schema(name: str) -> dict[str, Any]:
    """One schema, as a fresh dict.

    Args:
        name: one of ``SCHEMA_NAMES``.

    Returns:
        The JSON Schema document.

    Raises:
        KeyError: ``name`` is not a published schema.
    """
    if name not in SCHEMA_NAMES:
        raise KeyError(f"no schema {name!r}; there are {', '.join(SCHEMA_NAMES)}")
    schema: dict[str, Any] = json.loads(_text(name))
    return schema
