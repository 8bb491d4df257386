"""/v1/schemas/{name}: the published JSON Schemas of Graft's documents (public, no key)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.errors import problem
from app.engine.schemas import SCHEMA_NAMES, SchemaName, load_schema

router = APIRouter(prefix="/v1/schemas", tags=["schemas"])

_JSON_SCHEMA = "application/schema+json"
# What every served document has: a JSON Schema (draft 2020-12) with Graft's document id.
_SCHEMA_DOCUMENT = {
    "type": "object",
    "required": ["$schema", "$id", "title", "type"],
    "properties": {
        "$schema": {"const": "https://json-schema.org/draft/2020-12/schema"},
        "$id": {"type": "string", "examples": ["graft.report/v1"]},
        "title": {"type": "string"},
        "type": {"const": "object"},
    },
}


class SchemaResponse(JSONResponse):
    """JSON served as ``application/schema+json``."""

    media_type = _JSON_SCHEMA


@router.get(
    "/{name}",
    response_class=SchemaResponse,
    responses={
        200: {
            "description": "the JSON Schema (draft 2020-12)",
            "content": {_JSON_SCHEMA: {"schema": _SCHEMA_DOCUMENT}},
        },
        422: problem(f"no such schema: the names are {', '.join(SCHEMA_NAMES)}"),
    },
)
async def get_schema(name: SchemaName) -> SchemaResponse:
    """The JSON Schema of ``graft.{name}/v1``: report, skeleton, manifest or inspect."""
    body: dict[str, Any] = load_schema(name)
    return SchemaResponse(body, headers={"Cache-Control": "public, max-age=3600"})
