"""``torch.distributed.checkpoint`` folders: ``.metadata`` plus ``__<rank>_<n>.distcp`` files.

Whatever wrote them (``dcp.save`` from any world size, FSDP/FSDP2 sharded state dicts,
torchtitan), every tensor is read at its global shape: its chunks, each a ``torch.save`` zip at
a byte range of one ``.distcp`` file, are read through the zip reader and placed at their
offsets, one tensor at a time. Chunks split along the first dim are read straight into the
result, so a tensor costs its own size and no more.

The model's tensors are the source (the ``model`` entry, as ``get_model_state_dict`` callers
save it, or the flat keys torchtitan writes); optimizer state and other entries are listed and
left out unless ``entry`` names them.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import TooLargeError, UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES, TensorInfo, guess_kind
from app.engine.readers.base import MAX_HEADER_BYTES, Parsed
from app.engine.readers.dcp_metadata import DcpMetadata, DcpTensor, parse_metadata
from app.engine.readers.entries import ENTRY_ORDER
from app.engine.readers.megatron_dist import (
    cut_vocab,
    is_megatron_dist,
    saved_args,
    unstack_layers,
)
from app.engine.readers.ranges import read_into
from app.engine.readers.source import Located, Source, SourceExtras
from app.engine.readers.torch_zip import ZipReader
from app.engine.readers.unpickler import TensorRef

if TYPE_CHECKING:
    import torch

__all__ = ["DCP_METADATA", "DcpReader", "dcp_files", "open_dcp"]

DCP_METADATA = ".metadata"
_SHARD_NAME = re.compile(r"__(\d+)_(\d+)\.distcp")
# Top-level entries of a training state that are never the model's weights.
_NOT_WEIGHTS = ("optim", "lr_scheduler", "scheduler", "dataloader", "train_state", "rng")


def dcp_files(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
) -> dict[str, Path] | None:
    """Name -> path of a DCP folder's files, or None when ``path`` is not a DCP checkpoint.

    A DCP checkpoint is a folder holding ``.metadata`` (or that file itself), or a set of
    files (a list, or name -> path) among which is one named ``.metadata``.
    """
    if isinstance(path, Mapping):
        files = {str(k): Path(v) for k, v in path.items()}
    elif isinstance(path, str | os.PathLike):
        p = Path(path)
        folder = p if p.is_dir() else p.parent if p.name == DCP_METADATA else None
        if folder is None or not (folder / DCP_METADATA).is_file():
            return None
        files = {c.name: c for c in sorted(folder.iterdir()) if c.is_file()}
    else:
        files = {Path(p).name: Path(p) for p in path}
    return files if DCP_METADATA in files else None


class DcpReader:
    """Reads one tensor of a DCP checkpoint at its global shape from its chunks."""

    format = "dcp"

    def __init__(self, files: Mapping[str, Path], metadata: DcpMetadata) -> None:
        self._files = files
        self.metadata = metadata
        self.parsed = Parsed(root=None)

    def _chunk_ref(self, reader: ZipReader, tensor: DcpTensor, sizes: tuple[int, ...]) -> Any:
        ref = reader.parsed.root
        stored = (1,) * tensor.squeeze + sizes
        if not isinstance(ref, TensorRef) or ref.shape != stored or ref.dtype != tensor.dtype:
            raise UnreadableCheckpointError(
                f"a DCP chunk of {tensor.fqn!r} does not hold a {tensor.dtype} tensor of shape "
                f"{list(stored)} as its metadata says"
            )
        return ref

    def read(self, handle: DcpTensor) -> torch.Tensor:
        import torch

        if len(handle.chunks) == 1:  # the whole tensor in one chunk
            chunk = handle.chunks[0]
            with closing(ZipReader(self._files[chunk.file], (chunk.offset, chunk.length))) as inner:
                ref = self._chunk_ref(inner, handle, chunk.sizes)
                whole = inner.read(ref).reshape(handle.stored_shape)
                return whole.narrow(0, 0, handle.shape[0]) if handle.rows else whole
        out = torch.zeros(handle.stored_shape, dtype=getattr(torch, handle.dtype))
        for chunk in handle.chunks:
            if not math.prod(chunk.sizes):
                continue
            dest = out
            for dim, (start, size) in enumerate(zip(chunk.offsets, chunk.sizes, strict=True)):
                dest = dest.narrow(dim, start, size)
            with closing(ZipReader(self._files[chunk.file], (chunk.offset, chunk.length))) as inner:
                ref = self._chunk_ref(inner, handle, chunk.sizes)
                where = inner.byte_range(ref)
                if where is not None and dest.is_contiguous():
                    _read_into(dest, *where)
                else:
                    dest.copy_(inner.read(ref).reshape(chunk.sizes))
        return out.narrow(0, 0, handle.shape[0]) if handle.rows else out

    def byte_range(self, handle: DcpTensor) -> tuple[Path, int, int] | None:
        """The one chunk's bytes, when a single chunk holds the whole tensor in C order."""
        if len(handle.chunks) != 1 or handle.rows:
            return None
        chunk = handle.chunks[0]
        with closing(ZipReader(self._files[chunk.file], (chunk.offset, chunk.length))) as inner:
            return inner.byte_range(self._chunk_ref(inner, handle, chunk.sizes))

    def byte_ranges(self, handle: DcpTensor) -> list[tuple[Path, int, int]] | None:
        """The chunks' bytes end to end, when the chunks split the first dim only (as FSDP
        and ``Shard(0)`` save them) and each lies in C order: the tensor as ranges to copy."""
        if handle.rows:  # padding rows cut: read, then narrowed
            return None
        if len(handle.chunks) == 1:
            span = self.byte_range(handle)
            return [span] if span is not None else None
        chunks = sorted((c for c in handle.chunks if 0 not in c.sizes), key=lambda c: c.offsets)
        rows = 0
        for chunk in chunks:
            if not chunk.offsets or chunk.offsets[0] != rows or chunk.sizes[1:] != handle.shape[1:]:
                return None
            rows += chunk.sizes[0]
        spans = []
        for chunk in chunks:
            with closing(ZipReader(self._files[chunk.file], (chunk.offset, chunk.length))) as inner:
                span = inner.byte_range(self._chunk_ref(inner, handle, chunk.sizes))
            if span is None:
                return None
            spans.append(span)
        return spans

    def storage_id(self, handle: DcpTensor) -> tuple[str, ...]:
        return (handle.fqn,)

    def close(self) -> None:
        """Nothing stays open: each chunk's file is opened for its read."""


def _read_into(dest: torch.Tensor, path: Path, offset: int, length: int) -> None:
    """Read a chunk's ``length`` bytes at ``offset`` straight into a contiguous tensor."""
    if length != dest.numel() * dest.element_size():
        raise UnreadableCheckpointError("a DCP chunk's byte count disagrees with its shape")
    read_into(dest, path, offset, length, what="a DCP chunk")


def _top(meta: DcpMetadata, fqn: str) -> str:
    """The top-level state-dict entry ``fqn`` was saved under (``model``, ``optimizer``)."""
    path = meta.paths.get(fqn)
    if path:
        return path[0]
    # (Megatron's sharded objects: ``rng_state/shard_0.1_2.2`` under ``rng_state``)
    return fqn.split("/", 1)[0].split(".", 1)[0]


def _choose(meta: DcpMetadata, entry: str) -> tuple[str | None, dict[str, str]]:
    """The chosen entry and its tensors, fqn -> key (the entry's prefix removed)."""
    if entry not in ("auto", ""):
        prefix = entry + "."
        keys = {f: f[len(prefix) :] for f in meta.tensors if f.startswith(prefix)}
        if not keys:
            raise UnreadableCheckpointError(
                f"entry {entry!r} holds no tensors in this DCP checkpoint "
                f"(entries: {', '.join(sorted({_top(meta, f) for f in meta.tensors}))})"
            )
        return entry, keys
    nested = {_top(meta, f) for f in meta.tensors if f != _top(meta, f)}
    for name in ENTRY_ORDER:
        if name in nested:
            return _choose(meta, name)
    keys = {f: f for f in meta.tensors if not _top(meta, f).startswith(_NOT_WEIGHTS)}
    if not keys:
        raise UnreadableCheckpointError("the DCP checkpoint holds no model tensors")
    return None, keys


def _others(meta: DcpMetadata, chosen: dict[str, str]) -> dict[str, dict[str, int]]:
    """What is left out, by top-level entry: tensors, their bytes, and opaque values."""
    others: dict[str, dict[str, int]] = {}
    for fqn, tensor in meta.tensors.items():
        if fqn not in chosen:
            tally = others.setdefault(_top(meta, fqn), {"tensors": 0, "bytes": 0, "values": 0})
            tally["tensors"] += 1
            tally["bytes"] += math.prod(tensor.shape) * DTYPE_SIZES[tensor.dtype]
    for fqn in meta.values:
        tally = others.setdefault(_top(meta, fqn), {"tensors": 0, "bytes": 0, "values": 0})
        tally["values"] += 1
    return others


def _left_out(tally: dict[str, int]) -> str:
    parts = [f"{tally['tensors']} tensors, {tally['bytes']} bytes"] if tally["tensors"] else []
    parts += [f"{tally['values']} values"] if tally["values"] else []
    return "dcp: " + ", ".join(parts)


def open_dcp(files: Mapping[str, Path], entry: str = "auto") -> Source:
    """Open a DCP folder's files as one :class:`Source` of global-shape tensors.

    Args:
        files: name -> path of the folder's files; ``.metadata`` among them.
        entry: ``auto`` (the model: a ``model`` entry, or the flat keys that are not optimizer
            or trainer state) or a dotted entry such as ``optimizer`` or ``model``.

    Raises:
        UnsafeCheckpointError: the metadata pickle names anything but DCP's classes.
        UnreadableCheckpointError: the metadata is malformed, or the entry holds no tensors.
    """
    md_path = files[DCP_METADATA]
    if md_path.stat().st_size > MAX_HEADER_BYTES:
        raise TooLargeError(f".metadata is larger than {MAX_HEADER_BYTES} bytes")
    sizes = {name: p.stat().st_size for name, p in files.items()}
    meta = parse_metadata(md_path.read_bytes(), sizes)
    stacked, common = None, None
    if is_megatron_dist(files):  # Megatron-Core's torch_dist: its decoder layers stacked
        meta, stacked = unstack_layers(meta)
        common = saved_args(files, meta)
        if common is not None:
            meta = cut_vocab(meta, common[0])
    chosen, keys = _choose(meta, entry)
    reader = DcpReader(files, meta)
    entries = {key: Located(reader, meta.tensors[fqn]) for fqn, key in keys.items()}
    tensors = {}
    for fqn, key in keys.items():
        t = meta.tensors[fqn]
        tensors[key] = TensorInfo(key, t.shape, t.dtype, guess_kind(key, t.dtype))
    referenced = {c.file for t in meta.tensors.values() for c in t.chunks}
    shards = sorted({n for n in files if _SHARD_NAME.fullmatch(n)} | referenced)
    ranks = {m.group(1) for n in shards if (m := _SHARD_NAME.fullmatch(n))}
    others = _others(meta, keys)
    layout = {
        "format": "dcp",
        "version": meta.version,
        "world_size": len(ranks),
        "files": len(shards),
        "chunks": {key: len(meta.tensors[fqn].chunks) for fqn, key in keys.items()},
        "left_out": others,
    }
    if stacked is not None:
        layout["stacked_layers"] = stacked
    if common is not None:
        args, iteration = common
        if iteration is not None:
            layout["iteration"] = iteration
        layout["tensor_parallel"] = args.tensor_parallel
        layout["pipeline_parallel"] = args.pipeline_parallel
        padded = args.padded_vocab_size or 0
        layout["vocab"] = {"padded": padded, "kept": args.vocab_size or padded}
    ignored = {top: _left_out(t) for top, t in others.items()}
    candidates = sorted({_top(meta, f) for f in meta.tensors if f != _top(meta, f)})
    return Source(
        [md_path, *(files[n] for n in shards)],
        "dcp",
        [reader],
        entries,
        tensors,
        SourceExtras(entry=chosen, candidates=candidates, ignored=ignored, layout=layout),
    )
