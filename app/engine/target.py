"""What the converted weights must fit: a template checkpoint, a skeleton, or a live module.

A template has values (usable as fallback, ``kept``); a skeleton has shapes, dtypes, exact
parameter/buffer kinds and module types but no values. Both describe themselves as
:class:`~app.engine.meta.TensorInfo` so planning never needs tensor data.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.engine.errors import InvalidTargetError
from app.engine.meta import DTYPE_SIZES, TensorInfo
from app.engine.readers import Source, open_source

if TYPE_CHECKING:
    import torch
    from torch import nn

    from app.engine.architectures import BoundArchitecture

__all__ = ["SKELETON_SCHEMA", "Target", "skeleton_from_module"]

SKELETON_SCHEMA = "graft.skeleton/v1"
MAX_SKELETON_BYTES = 64 * 1024 * 1024

TargetKind = Literal["template", "skeleton", "architecture"]


class Target:
    """The receiving side of a conversion.

    Attributes:
        kind: ``template``, ``skeleton`` or ``architecture``.
        tensors: key -> description, in the target's own order.
        name: what to call it in reports (file name, ``skeleton``, ``arch:NAME``).
        architecture: for a registered architecture, the model it describes (with its
            kwargs): conversions into it are verified by running that model.
    """

    def __init__(
        self,
        kind: TargetKind,
        tensors: dict[str, TensorInfo],
        *,
        name: str,
        template: Source | None = None,
        architecture: BoundArchitecture | None = None,
    ) -> None:
        self.kind = kind
        self.tensors = tensors
        self.name = name
        self.architecture = architecture
        self._template = template

    @property
    def has_values(self) -> bool:
        return self._template is not None

    def read(self, key: str) -> torch.Tensor:
        """The template's own value for ``key`` (only templates have values)."""
        if self._template is None:
            raise InvalidTargetError(f"target {self.name} has no values to keep for {key!r}")
        return self._template.read(key)

    def batchnorm_modules(self) -> list[str]:
        """Module paths of BatchNorm layers: by module type when known, else by their buffers."""
        found: dict[str, None] = {}
        for key, info in self.tensors.items():
            module, _, leaf = key.rpartition(".")
            if info.module is not None:
                if "BatchNorm" in info.module or info.module == "SyncBatchNorm":
                    found[module] = None
            elif leaf == "running_mean":
                found[module] = None
        return list(found)

    def close(self) -> None:
        if self._template is not None:
            self._template.close()

    def __enter__(self) -> Target:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # Constructors ------------------------------------------------------------------------

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
        *,
        entry: str = "auto",
    ) -> Target:
        """A template: the target model's own checkpoint, in any source format."""
        source = open_source(path, entry=entry)
        return cls("template", dict(source.tensors), name=source.paths[0].name, template=source)

    @classmethod
    def from_skeleton(cls, skeleton: Mapping[str, Any] | str | os.PathLike[str]) -> Target:
        """A skeleton (``graft.skeleton/v1``): a dict, or a path to its JSON file."""
        if not isinstance(skeleton, Mapping):
            path = Path(skeleton)
            if path.stat().st_size > MAX_SKELETON_BYTES:
                raise InvalidTargetError(f"skeleton {path.name} is larger than 64 MiB")
            try:
                skeleton = json.loads(path.read_bytes())
            except (UnicodeDecodeError, ValueError):
                raise InvalidTargetError(f"skeleton {path.name} is not valid JSON") from None
        return cls("skeleton", _parse_skeleton(skeleton), name="skeleton")

    @classmethod
    def from_module(cls, module: nn.Module, *, name: str) -> Target:
        """A live (possibly meta-device) module: exact kinds and module types."""
        return cls("architecture", _module_tensors(module), name=name)

    @classmethod
    def from_architecture(
        cls,
        name: str,
        kwargs: Mapping[str, Any] | None = None,
        *,
        extra: str | None = None,
    ) -> Target:
        """A registered architecture, built on the meta device (planning allocates nothing).

        Args:
            name: the architecture's registered name (see ``app.engine.architectures``).
            kwargs: JSON-like kwargs for its factory, checked against its signature.
            extra: more architectures, ``name=module:factory,...`` (``GRAFT_ARCHITECTURES``).

        Raises:
            InvalidTargetError: unknown architecture, bad kwargs, or a factory that fails.
        """
        from app.engine.architectures import bind_architecture

        bound = bind_architecture(name, kwargs, extra=extra)
        model = bound.build("meta")
        return cls("architecture", _module_tensors(model), name=f"arch:{name}", architecture=bound)


def _parse_skeleton(skeleton: Any) -> dict[str, TensorInfo]:
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


def _module_tensors(module: nn.Module) -> dict[str, TensorInfo]:
    params = {name for name, _ in module.named_parameters(remove_duplicate=False)}
    tensors: dict[str, TensorInfo] = {}
    for key, value in module.state_dict(keep_vars=True).items():
        owner, _, _ = key.rpartition(".")
        module_type = type(module.get_submodule(owner)).__name__
        dtype = str(value.dtype).removeprefix("torch.")
        kind: Literal["parameter", "buffer"] = "parameter" if key in params else "buffer"
        tensors[key] = TensorInfo(key, tuple(value.shape), dtype, kind, module_type)
    return tensors


def skeleton_from_module(module: nn.Module) -> dict[str, Any]:
    """Describe a module as a ``graft.skeleton/v1`` document (persistent buffers only)."""
    return {
        "schema": SKELETON_SCHEMA,
        "tensors": {
            key: {
                "shape": list(info.shape),
                "dtype": info.dtype,
                "kind": info.kind,
                "module": info.module,
            }
            for key, info in _module_tensors(module).items()
        },
    }
