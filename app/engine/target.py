"""What the converted weights must fit: a template checkpoint, a skeleton, or a live module.

A template has values (usable as fallback, ``kept``); a skeleton has shapes, dtypes, exact
parameter/buffer kinds and module types but no values. Both describe themselves as
:class:`~app.engine.meta.TensorInfo` so planning never needs tensor data.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from app.engine.errors import InvalidTargetError
from app.engine.meta import TensorInfo
from app.engine.target_spec import (
    SKELETON_SCHEMA,
    ArchitectureTarget,
    CheckpointTarget,
    SkeletonTarget,
    parse_skeleton,
    read_skeleton,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from app.engine.adaptations import Adaptations
    from app.engine.architectures import ArchitectureRef, BoundArchitecture
    from app.engine.readers import Source
    from app.engine.readers.remote import RemoteBlob

__all__ = ["Target", "skeleton_from_module"]


TargetKind = Literal["template", "skeleton", "architecture"]
CheckpointFiles: TypeAlias = (
    "str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path] | RemoteBlob"
)


class Target:
    """The receiving side of a conversion.

    Attributes:
        kind: ``template``, ``skeleton`` or ``architecture``.
        tensors: key -> description, in the target's own order.
        name: what to call it in reports (file name, ``skeleton``, ``arch:NAME``).
        architecture: for a registered architecture, the model it describes (with its
            kwargs): conversions into it are verified by running that model.
        tied: ``{duplicate: kept}`` keys the architecture ties and declares in
            ``_tied_weights_keys`` (see :mod:`app.engine.plan.ties`).
        adaptations: the stem, classifier and position embedding the architecture declares
            (see :mod:`app.engine.adaptations`), adapted by default when shapes differ.
    """

    def __init__(
        self,
        kind: TargetKind,
        tensors: dict[str, TensorInfo],
        *,
        name: str,
        template: Source | None = None,
        architecture: BoundArchitecture | None = None,
        tied: dict[str, str] | None = None,
        adaptations: Adaptations | None = None,
    ) -> None:
        self.kind = kind
        self.adaptations = adaptations
        self.tied = tied or {}
        self.tensors = tensors
        self.name = name
        self.architecture = architecture
        self._template = template

    @property
    def has_values(self) -> bool:
        return self._template is not None

    @property
    def template(self) -> Source | None:
        """A template target's checkpoint (its identity is the target's, SPEC §3.3)."""
        return self._template

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
    def from_spec(
        cls,
        spec: CheckpointTarget | SkeletonTarget | ArchitectureTarget,
        *,
        files: CheckpointFiles | None = None,
        architectures: Sequence[ArchitectureRef] = (),
    ) -> Target:
        """The target a spec describes. The one place that asks which kind a target is.

        Args:
            spec: the target as data.
            files: a checkpoint target's files (its reference resolved by the caller: an
                upload's blobs, or the CLI's path); ignored for the other kinds.
            architectures: more architectures, (name, module, factory) triples.

        Raises:
            InvalidTargetError: an unusable skeleton, architecture or checkpoint.
        """
        if isinstance(spec, CheckpointTarget):
            return cls.from_checkpoint(files if files is not None else spec.checkpoint)
        if isinstance(spec, SkeletonTarget):
            return cls.from_skeleton(spec.skeleton)
        return cls.from_architecture(spec.architecture, spec.kwargs, extra=architectures)

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path] | RemoteBlob,
        *,
        entry: str = "auto",
    ) -> Target:
        """A template: the target model's own checkpoint, in any source format (or one
        safetensors file read by ranges, a :class:`~app.engine.readers.RemoteBlob`)."""
        from app.engine.readers import open_source

        source = open_source(path, entry=entry)
        return cls("template", dict(source.tensors), name=source.paths[0].name, template=source)

    @classmethod
    def from_skeleton(cls, skeleton: Mapping[str, Any] | str | os.PathLike[str]) -> Target:
        """A skeleton (``graft.skeleton/v1``): a dict, or a path to its JSON file."""
        if not isinstance(skeleton, Mapping):
            skeleton = read_skeleton(skeleton)
        return cls("skeleton", parse_skeleton(skeleton), name="skeleton")

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
        extra: Sequence[ArchitectureRef] = (),
    ) -> Target:
        """A registered architecture, built on the meta device (planning allocates nothing).

        Args:
            name: the architecture's registered name (see ``app.engine.architectures``).
            kwargs: JSON-like kwargs for its factory, checked against its signature.
            extra: more architectures, (name, module, factory) triples (``GRAFT_ARCHITECTURES``).

        Raises:
            InvalidTargetError: unknown architecture, bad kwargs, or a factory that fails.
        """
        from app.engine.architectures import bind_architecture

        bound = bind_architecture(name, kwargs, extra=extra)
        from app.engine.plan.ties import declared_ties

        model = bound.build("meta")
        return cls(
            "architecture", _module_tensors(model), name=f"arch:{name}", architecture=bound,
            tied=declared_ties(model), adaptations=bound.adaptations(model),
        )  # fmt: skip


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
