"""What an output says about where it came from: the target it was made for, read back with
the rest of its metadata (SPEC §3.3, issue item 5).

The output's safetensors ``__metadata__`` holds the recipe, the source's identity, the report
digest and the Graft version; ``graft.target`` adds the target: a registered architecture's
name and kwargs, a skeleton itself, or a template's sha256. With these, the file alone says
how to make it again (``graft replay``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.readers import open_source
from app.engine.target import Target
from app.engine.target_spec import SKELETON_SCHEMA

__all__ = [
    "OutputMetadata",
    "canonical_json",
    "describe_target",
    "output_metadata",
    "read_output_metadata",
]


def canonical_json(value: Any) -> bytes:
    """Canonical JSON (RFC 8785 for the documents Graft writes: sorted keys, no insignificant
    whitespace, UTF-8; integers and the few floats a recipe holds print alike)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def describe_target(target: Target) -> dict[str, Any]:
    """The target as data a replay can rebuild it from.

    Returns:
        ``{"kind": "architecture", "architecture", "kwargs"}``, ``{"kind": "skeleton",
        "skeleton"}`` (a module described live is written as its skeleton), or
        ``{"kind": "template", "sha256", "files"}``.
    """
    if target.architecture is not None:
        return {"kind": "architecture", "architecture": target.architecture.name,
                "kwargs": dict(target.architecture.kwargs)}  # fmt: skip
    template = target.template
    if template is not None:
        return {"kind": "template", "sha256": template.sha256(),
                "files": [p.name for p in template.paths]}  # fmt: skip
    tensors = {
        key: {"shape": list(i.shape), "dtype": i.dtype, "kind": i.kind}
        | ({"module": i.module} if i.module else {})
        for key, i in target.tensors.items()
    }
    return {"kind": "skeleton", "skeleton": {"schema": SKELETON_SCHEMA, "tensors": tensors}}


@dataclass(frozen=True)
class OutputMetadata:
    """An output's own account of itself.

    Attributes:
        recipe: the recipe, as the output holds it.
        target: the target description (see :func:`describe_target`); ``None`` for outputs
            written before Graft recorded it.
        source: ``{"sha256": hex}`` or ``{"blake3": hex}``; empty when none was taken.
        report_sha256: the digest of the report's per-tensor parts.
        version: the Graft version that wrote it.
    """

    recipe: dict[str, Any]
    target: dict[str, Any] | None
    source: dict[str, str]
    report_sha256: str | None
    version: str | None

    @property
    def recipe_sha256(self) -> str:
        return hashlib.sha256(canonical_json(self.recipe)).hexdigest()


def read_output_metadata(output: Path) -> OutputMetadata:
    """Read an output's Graft metadata (a safetensors file, or a sharded set's folder).

    Raises:
        UnreadableCheckpointError: not a Graft output (no ``graft.recipe``).
    """
    with open_source(output, strip_prefixes="none") as out:
        meta = dict(out.metadata)
    return output_metadata(meta, str(output))


def output_metadata(meta: dict[str, str], output: str) -> OutputMetadata:
    """An output's Graft metadata from its safetensors ``__metadata__`` (``output`` names it
    in errors).

    Raises:
        UnreadableCheckpointError: not a Graft output (no ``graft.recipe``).
    """
    if "graft.recipe" not in meta:
        raise UnreadableCheckpointError(
            f"{output} carries no graft.recipe metadata: it was not written by Graft as safetensors"
        )
    try:
        recipe = json.loads(meta["graft.recipe"])
        target = json.loads(meta["graft.target"]) if "graft.target" in meta else None
    except ValueError:
        raise UnreadableCheckpointError(f"{output}: its graft metadata is not JSON") from None
    source = {k.removeprefix("graft.source_"): v for k, v in meta.items()
              if k in ("graft.source_sha256", "graft.source_blake3")}  # fmt: skip
    return OutputMetadata(recipe, target, source, meta.get("graft.report_sha256"),
                          meta.get("graft.version"))  # fmt: skip
