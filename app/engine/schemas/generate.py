"""The published JSON Schemas, generated from the document models.

:func:`generate_schema` builds one schema from its model (draft 2020-12, with the document's
``$id``); :func:`write_schemas` writes them all beside this module, where
:func:`app.engine.schemas.load_schema` reads them. Run ``python -m app.engine.schemas`` after
changing a model; a test keeps the shipped files equal to what this generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from app.engine.report.models import Manifest, Report
from app.engine.schemas import SCHEMA_NAMES, SchemaName
from app.engine.schemas.documents import InspectDocument, SkeletonDocument

__all__ = ["SCHEMA_FOLDER", "generate_schema", "schema_text", "write_schemas"]

SCHEMA_FOLDER = Path(__file__).parent
DRAFT = "https://json-schema.org/draft/2020-12/schema"

_MODELS: dict[SchemaName, type[BaseModel]] = {
    "report": Report,
    "skeleton": SkeletonDocument,
    "manifest": Manifest,
    "inspect": InspectDocument,
}


def _untitled(node: Any) -> Any:
    """``node`` without pydantic's per-model and per-field titles (the names say as much)."""
    if isinstance(node, dict):
        return {
            k: (_untitled(v) if k != "properties" else {p: _untitled(s) for p, s in v.items()})
            for k, v in node.items()
            if k != "title" or not isinstance(v, str)
        }
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _inlined(node: Any, defs: dict[str, Any]) -> Any:
    """``node`` with every ``{"$ref": "#/$defs/X"}`` replaced by ``X`` itself: each schema is
    one self-contained tree (the models nest, never recurse)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            return _inlined(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inlined(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inlined(v, defs) for v in node]
    return node


def generate_schema(name: SchemaName) -> dict[str, Any]:
    """The JSON Schema of document ``name``, generated from its model.

    Args:
        name: one of ``SCHEMA_NAMES``.

    Returns:
        The schema: ``$schema``, ``$id`` and ``title`` (``graft.<name>/v1``), then the model's.
    """
    model = _MODELS[name]
    generated = _untitled(model.model_json_schema(by_alias=True, mode="validation"))
    generated = _inlined(generated, generated.pop("$defs", {}))
    document_id = f"graft.{name}/v1"
    properties = generated.pop("properties")
    properties = {"schema": {"const": document_id}} | {
        k: v for k, v in properties.items() if k != "schema"
    }
    required = ["schema", *[r for r in generated.pop("required", []) if r != "schema"]]
    return {
        "$schema": DRAFT,
        "$id": document_id,
        "title": document_id,
        "description": " ".join(generated.pop("description", "").split()),
        "type": generated.pop("type"),
        "required": required,
        "properties": properties,
        **generated,
    }


def schema_text(name: SchemaName) -> str:
    """What the shipped file of ``name`` holds: the generated schema, indented, one newline."""
    return json.dumps(generate_schema(name), indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: Path = SCHEMA_FOLDER) -> list[Path]:
    """Write every schema into ``folder`` as ``<name>.json``; returns the files written."""
    written = []
    for name in SCHEMA_NAMES:
        path = folder / f"{name}.json"
        path.write_text(schema_text(name), encoding="utf-8")
        written.append(path)
    return written
