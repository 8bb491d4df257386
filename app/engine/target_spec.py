"""What a target is, as data: the one shape a target has from the API body (or the CLI's
argument) through the job row and the sandbox child to ``Target.from_spec``.

Pure pydantic and JSON: importing this never loads a checkpoint reader or torch, so the API
process can validate targets (a skeleton's entries included) without either.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, ValidationError

from app.engine.errors import InvalidTargetError
from app.engine.meta import DTYPE_SIZES, TensorInfo

__all__ = [
    "SKELETON_SCHEMA",
    "ArchitectureTarget",
    "CheckpointTarget",
    "SkeletonTarget",
    "TargetSpec",
    "parse_skeleton",
    "parse_target_spec",
    "read_skeleton",
]

SKELETON_SCHEMA = "graft.skeleton/v1"
MAX_SKELETON_BYTES = 64 * 1024 * 1024


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def checkpoint_refs(self) -> list[str]:
        """The checkpoints this target names (upload ids in the service, paths in the CLI)."""
        return []

    def public(self) -> dict[str, Any]:
        """How a job shows its target: the spec, with a skeleton summarised."""
        return self.model_dump(mode="json")

    def architecture_ref(self) -> tuple[str, dict[str, Any]] | None:
        """The registered architecture and kwargs this target builds, if it builds one."""
        return None

    def check(self) -> None:
        """Validate what can be validated without files or torch (a skeleton's entries).

        Raises:
            InvalidTargetError: naming the entry.
        """


class CheckpointTarget(_Spec):
    """A template: the target model's own state_dict, values usable as fallback."""

    checkpoint: str = Field(description="id of an uploaded checkpoint: the target's own state_dict")

    def checkpoint_refs(self) -> list[str]:
        return [self.checkpoint]


class SkeletonTarget(_Spec):
    """Shapes, dtypes, kinds and module types, no values (``graft.skeleton/v1``)."""

    skeleton: dict[str, Any] = Field(description="a graft.skeleton/v1 document")

    def check(self) -> None:
        parse_skeleton(self.skeleton)

    def public(self) -> dict[str, Any]:
        tensors = self.skeleton.get("tensors")
        return {"skeleton": {"tensors": len(tensors) if isinstance(tensors, Mapping) else 0}}


class ArchitectureTarget(_Spec):
    """A registered architecture (``graft architectures``) and its factory's kwargs."""

    architecture: str
    kwargs: dict[str, Any] = Field(default_factory=dict)

    def architecture_ref(self) -> tuple[str, dict[str, Any]] | None:
        return self.architecture, self.kwargs


def _spec_kind(value: Any) -> str | None:
    """Which target a body describes: by the one key that names it."""
    if isinstance(value, _Spec):
        return {CheckpointTarget: "checkpoint", SkeletonTarget: "skeleton"}.get(
            type(value), "architecture"
        )
    if isinstance(value, Mapping):
        return next((k for k in ("checkpoint", "skeleton", "architecture") if k in value), None)
    return None


TargetSpec = Annotated[
    Annotated[CheckpointTarget, Tag("checkpoint")]
    | Annotated[SkeletonTarget, Tag("skeleton")]
    | Annotated[ArchitectureTarget, Tag("architecture")],
    Discriminator(
        _spec_kind,
        custom_error_type="invalid_target",
        custom_error_message="target must have one of checkpoint, skeleton, architecture",
    ),
]


_TARGET_SPEC: TypeAdapter[CheckpointTarget | SkeletonTarget | ArchitectureTarget] = TypeAdapter(
    TargetSpec
)


def parse_target_spec(data: Any) -> CheckpointTarget | SkeletonTarget | ArchitectureTarget:
    """A target spec from JSON-like data (a job row, a CLI argument turned into data).

    Raises:
        InvalidTargetError: it is none of the three kinds, or a field is wrong.
    """
    try:
        return _TARGET_SPEC.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:])
        raise InvalidTargetError(f"target{'.' + where if where else ''}: {first['msg']}") from None


def read_skeleton(path: str | os.PathLike[str]) -> Any:
    """A skeleton's JSON file, parsed (at most 64 MiB); checked by ``Target.from_skeleton``."""
    path = Path(path)
    if path.stat().st_size > MAX_SKELETON_BYTES:
        raise InvalidTargetError(f"skeleton {path.name} is larger than 64 MiB")
    try:
        return json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError):
        raise InvalidTargetError(f"skeleton {path.name} is not valid JSON") from None


def parse_skeleton(skeleton: Any) -> dict[str, TensorInfo]:
    if not isinstance(skeleton, Mapping) or skeleton.get("schema") != SKELETON_SCHEMA:
        raise InvalidTargetError(f'a skeleton needs "schema": "{SKELETON_SCHEMA}"')
    entries = skeleton.get("tensors")
    if not isinstance(entries, Mapping) or not entries:
        raise InvalidTargetError('a skeleton needs a non-empty "tensors" object')
    tensors: dict[str, TensorInfo] = {}
    for key, spec in entries.items():
        if not isinstance(key, str) or not key or not isinstance(spec, Mapping):
            raise InvalidTargetError(f"skeleton entry {key!r} must map a key to an object")
        shape = spec.get("shape")
        if not isinstance(shape, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
        ):
            raise InvalidTargetError(f"skeleton entry {key!r}: shape must be a list of ints >= 0")
        dtype = spec.get("dtype", "float32")
        if dtype not in DTYPE_SIZES:
            raise InvalidTargetError(f"skeleton entry {key!r}: unknown dtype {dtype!r}")
        kind = spec.get("kind", "parameter")
        if kind not in ("parameter", "buffer"):
            raise InvalidTargetError(f"skeleton entry {key!r}: kind is parameter or buffer")
        module = spec.get("module")
        if module is not None and not isinstance(module, str):
            raise InvalidTargetError(f"skeleton entry {key!r}: module must be a string")
        tensors[key] = TensorInfo(key, tuple(shape), dtype, kind, module)
    return tensors
