"""The ``.metadata`` pickle of a ``torch.distributed.checkpoint`` directory, read as plain data.

DCP pickles a ``Metadata`` dataclass: every state-dict entry (a tensor's global size, dtype and
chunks, or an opaque bytes value), where each chunk lies (``MetadataIndex`` ->
``_StorageInfo``: file, offset, length) and the nested path of every flattened key. The
restricted unpickler reads it with exactly those classes allowed, each resolved to an inert
:class:`_Record` (fields only, no behaviour, sealed against changes); torch is never imported.
The save plans Megatron-Core adds (``all_local_plans``) are read as inert placeholders.
The records are then checked and copied into the frozen dataclasses below.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.meta import DTYPE_SIZES
from app.engine.readers.placeholders import placeholder_globals
from app.engine.readers.unpickler import DtypeMarker, Global, load_restricted

__all__ = ["DcpChunk", "DcpMetadata", "DcpTensor", "parse_metadata"]

_INT64_MAX = 2**63 - 1
_MAX_ENTRIES = 5_000_000
_MAX_COMPARISONS = 5_000_000  # chunk pairs checked for overlap, per tensor


class _Sealed(type):
    """The records' metaclass: a pickle's BUILD cannot set attributes on a shared class."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise UnsafeCheckpointError(
            f"unsafe checkpoint: the pickle tries to modify {cls.__name__}, which DCP never does"
        )

    def __delattr__(cls, name: str) -> None:
        raise UnsafeCheckpointError(f"unsafe checkpoint: the pickle tries to modify {cls.__name__}")


class _Record(metaclass=_Sealed):
    """One DCP dataclass instance as plain fields: no ``__init__``, no methods that run."""

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise UnreadableCheckpointError(
                f"DCP metadata: {type(self).__name__} state is not a dict of fields"
            )
        self.__dict__.update(state)


def _f(record: _Record, name: str) -> Any:
    """A record's field (read from its ``__dict__``, which no pickled field can shadow)."""
    return record.__dict__.get(name)


class _Metadata(_Record):
    pass


class _TensorStorage(_Record):
    pass


class _Chunk(_Record):
    pass


class _Bytes(_Record):
    pass


class _Index(_Record):
    pass


class _StorageInfo(_Record):
    pass


class _StorageMeta(_Record):
    pass


class _TensorProperties(_Record):
    """Pickled by its own ``__getstate__`` as (dtype, layout, requires_grad, memory format,
    pin_memory)."""

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 5:
            self.__dict__["dtype"] = state[0]
            return
        super().__setstate__(state)


_LAYOUTS = frozenset({"torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.jagged"})


def _layout(name: Any) -> str:
    if name not in _LAYOUTS:
        raise UnreadableCheckpointError(f"DCP metadata: unknown tensor layout {name!r:.40}")
    return str(name)


def _memory_format(value: Any) -> int:
    if value not in (0, 1, 2) or isinstance(value, bool):
        raise UnreadableCheckpointError("DCP metadata: unknown memory format")
    return int(value)


def _path(*parts: Any) -> str:
    if not all(isinstance(p, str) for p in parts):
        raise UnreadableCheckpointError("DCP metadata: a path of something other than text")
    return "/".join(parts)


_MD = "torch.distributed.checkpoint.metadata"
_SHARD_MD = "torch.distributed._shard.sharded_tensor.metadata"  # torch 2.0-2.1 pickles
_ALLOWED: dict[tuple[str, str], Any] = {
    (_MD, "Metadata"): _Metadata,
    (_MD, "TensorStorageMetadata"): _TensorStorage,
    (_MD, "ChunkStorageMetadata"): _Chunk,
    (_MD, "BytesStorageMetadata"): _Bytes,
    (_MD, "MetadataIndex"): _Index,
    (_MD, "StorageMeta"): _StorageMeta,
    (_MD, "TensorProperties"): _TensorProperties,
    (_MD, "_MEM_FORMAT_ENCODING"): Global(_memory_format),
    (_SHARD_MD, "TensorProperties"): _TensorProperties,
    (_SHARD_MD, "MEM_FORMAT_ENCODING"): Global(_memory_format),
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch.serialization", "_get_layout"): Global(_layout),
    ("pathlib", "PosixPath"): Global(_path),
    ("pathlib", "PurePosixPath"): Global(_path),
    ("pathlib", "WindowsPath"): Global(_path),
    ("pathlib", "PureWindowsPath"): Global(_path),
    # Megatron-Core's torch_dist saver also pickles every rank's save plan into the metadata
    # (``all_local_plans``); older versions name its own empty marker classes. Graft never
    # uses them: inert placeholders, nothing imported.
    **placeholder_globals(
        [
            "torch.distributed.checkpoint.planner.SavePlan",
            "torch.distributed.checkpoint.planner.WriteItem",
            "torch.distributed.checkpoint.planner.WriteItemType",
            "torch.distributed.checkpoint.planner.TensorWriteData",
            "torch.distributed.checkpoint.planner.BytesIOWriteData",
            "megatron.core.dist_checkpointing.strategies.torch.MCoreSavePlan",
            "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata",
        ]
    ),
}


@dataclass(frozen=True)
class DcpChunk:
    """One saved chunk: where it sits in the global tensor and where its bytes lie."""

    offsets: tuple[int, ...]
    sizes: tuple[int, ...]
    file: str
    offset: int
    length: int


@dataclass(frozen=True)
class DcpTensor:
    """One tensor of the state dict at its global shape, with every chunk that makes it.

    ``squeeze``: leading size-1 dims each stored chunk has and this tensor does not (one
    layer of a tensor Megatron-Core saved stacked over its layers). ``rows``: the rows along
    dim 0 the chunks cover when more than ``shape`` keeps (a vocabulary's padding, cut).
    """

    fqn: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[DcpChunk, ...]
    squeeze: int = 0
    rows: int = 0

    @property
    def stored_shape(self) -> tuple[int, ...]:
        """The shape the chunks tile (``shape`` unless padding rows are cut)."""
        return (self.rows, *self.shape[1:]) if self.rows else self.shape


@dataclass(frozen=True)
class DcpMetadata:
    """What the ``.metadata`` says: tensors, opaque values (and where each one's bytes lie:
    file, offset, length), and each key's nested path."""

    tensors: dict[str, DcpTensor]
    values: list[str]
    paths: dict[str, tuple[str, ...]]
    version: str | None
    value_at: dict[str, tuple[str, int, int]] = field(default_factory=dict)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX for v in value
    ):
        raise UnreadableCheckpointError(f"DCP metadata: {what} is not a tuple of sizes")
    return tuple(value)


def _storage_map(storage: Any, files: Mapping[str, int]) -> dict[tuple[str, tuple[int, ...]], Any]:
    if not isinstance(storage, dict) or len(storage) > _MAX_ENTRIES:
        raise UnreadableCheckpointError("DCP metadata has no storage_data map")
    found: dict[tuple[str, tuple[int, ...]], Any] = {}
    for index, info in storage.items():
        if not isinstance(index, _Index) or not isinstance(info, _StorageInfo):
            raise UnreadableCheckpointError("DCP metadata: storage_data holds unknown records")
        fqn, offset = _f(index, "fqn"), _f(index, "offset")
        name, start, length = (_f(info, k) for k in ("relative_path", "offset", "length"))
        if _f(info, "transform_descriptors"):
            raise UnreadableCheckpointError(
                f"DCP chunk of {fqn!r} is stored through transforms "
                f"{_f(info, 'transform_descriptors')!r:.60}, which Graft does not read"
            )
        if not isinstance(name, str) or name not in files:
            raise UnsafeCheckpointError(
                f"unsafe checkpoint: DCP metadata sends {fqn!r:.80} to {name!r:.80}, which is "
                "not a file of the checkpoint folder"
            )
        start, length = _ints((start, length), f"the byte range of {fqn!r:.80}")
        if start + length > files[name]:
            raise UnreadableCheckpointError(
                f"DCP chunk of {fqn!r:.80} lies past the end of {name} (truncated?)"
            )
        key = (str(fqn), _ints(offset, "a chunk offset") if offset is not None else ())
        found[key] = (name, start, length)
    return found


def _tensor(
    fqn: str, md: _TensorStorage, where: dict[tuple[str, tuple[int, ...]], Any]
) -> DcpTensor:
    props = _f(md, "properties")
    dtype = _f(props, "dtype") if isinstance(props, _TensorProperties) else None
    if not isinstance(dtype, DtypeMarker) or dtype.name not in DTYPE_SIZES:
        raise UnreadableCheckpointError(f"DCP tensor {fqn!r:.80} has an unknown dtype")
    shape = _ints(_f(md, "size"), f"the size of {fqn!r:.80}")
    chunks = _f(md, "chunks")
    if not isinstance(chunks, list) or not chunks:
        raise UnreadableCheckpointError(f"DCP tensor {fqn!r:.80} has no chunks")
    out = []
    for chunk in chunks:
        if not isinstance(chunk, _Chunk):
            raise UnreadableCheckpointError(f"DCP tensor {fqn!r:.80} has a malformed chunk")
        offsets = _ints(_f(chunk, "offsets"), "a chunk offset")
        sizes = _ints(_f(chunk, "sizes"), "a chunk size")
        if len(offsets) != len(shape) or len(sizes) != len(shape):
            raise UnreadableCheckpointError(f"DCP chunk of {fqn!r:.80} has the wrong rank")
        if any(o + s > d for o, s, d in zip(offsets, sizes, shape, strict=True)):
            raise UnreadableCheckpointError(
                f"DCP chunk of {fqn!r:.80} at {list(offsets)} lies outside {list(shape)}"
            )
        located = where.get((fqn, offsets))
        if located is None:
            raise UnreadableCheckpointError(
                f"DCP chunk of {fqn!r:.80} at {list(offsets)} has no storage entry"
            )
        out.append(DcpChunk(offsets, sizes, *located))
    _check_cover(fqn, shape, out)
    return DcpTensor(fqn, shape, dtype.name, tuple(out))


def _check_cover(fqn: str, shape: tuple[int, ...], chunks: list[DcpChunk]) -> None:
    """The chunks tile the tensor: their volumes add up to it and no two overlap.

    Sorted by offset, a chunk is compared only with those that share rows with it: one
    comparison each when the chunks split the first dim. Past :data:`_MAX_COMPARISONS` the
    rest is not checked; a tensor read from chunks starts zeroed, so overlapping chunks can
    give wrong values but never expose memory.
    """
    if sum(math.prod(c.sizes) for c in chunks) != math.prod(shape):
        raise UnreadableCheckpointError(
            f"DCP chunks of {fqn!r:.80} do not add up to its size {list(shape)}"
        )
    boxes = sorted(chunks, key=lambda c: c.offsets)
    budget = _MAX_COMPARISONS
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            budget -= 1
            if budget < 0 or (shape and b.offsets[0] >= a.offsets[0] + a.sizes[0]):
                break
            meets = all(
                ao < bo + bs and bo < ao + as_
                for ao, as_, bo, bs in zip(a.offsets, a.sizes, b.offsets, b.sizes, strict=True)
            )
            if meets and 0 not in a.sizes and 0 not in b.sizes:
                raise UnreadableCheckpointError(f"DCP chunks of {fqn!r:.80} overlap")


def parse_metadata(data: bytes, files: Mapping[str, int]) -> DcpMetadata:
    """Read a ``.metadata`` pickle as plain data, checked against the folder's files.

    Args:
        data: the pickle's bytes.
        files: file name -> size of every file in the checkpoint folder.

    Returns:
        Its tensors (global shapes, chunks located), opaque values and nested key paths.

    Raises:
        UnsafeCheckpointError: the pickle names anything but DCP's metadata classes, or a
            chunk points outside the folder.
        UnreadableCheckpointError: the metadata is malformed or disagrees with the files.
    """
    root = load_restricted(data, extra=_ALLOWED)
    if not isinstance(root, _Metadata):
        raise UnreadableCheckpointError("the .metadata file does not hold DCP Metadata")
    entries = _f(root, "state_dict_metadata")
    if not isinstance(entries, dict) or len(entries) > _MAX_ENTRIES:
        raise UnreadableCheckpointError("DCP metadata has no state_dict_metadata")
    where = _storage_map(_f(root, "storage_data"), files)
    tensors: dict[str, DcpTensor] = {}
    values: list[str] = []
    for fqn, md in entries.items():
        if not isinstance(fqn, str):
            raise UnreadableCheckpointError("DCP metadata: a key that is not text")
        if isinstance(md, _TensorStorage):
            tensors[fqn] = _tensor(fqn, md, where)
        elif isinstance(md, _Bytes):
            values.append(fqn)
        else:
            raise UnreadableCheckpointError(f"DCP entry {fqn!r:.80} is of an unknown kind")
    planner = _f(root, "planner_data")
    paths: dict[str, tuple[str, ...]] = {}
    if isinstance(planner, dict):
        for fqn, path in planner.items():
            if isinstance(fqn, str) and isinstance(path, tuple | list):
                paths[fqn] = tuple(str(p) for p in path)
    version = _f(root, "version")
    value_at = {fqn: where[(fqn, ())] for fqn in values if (fqn, ()) in where}
    return DcpMetadata(
        tensors, values, paths, version if isinstance(version, str) else None, value_at
    )
