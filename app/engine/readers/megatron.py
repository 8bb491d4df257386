"""Megatron-LM checkpoints (the legacy ``torch`` format), read without Megatron installed.

A checkpoint folder holds ``latest_checkpointed_iteration.txt`` and ``iter_NNNNNNN/`` (or
``release/``) with one ``mp_rank_TT[_PPP]/model_optim_rng.pt`` per tensor-parallel rank TT and
pipeline stage PPP: a ``torch.save`` zip of ``{"args", "iteration", "model", "rng_state",
"optimizer", …}``. Every rank file is read by the zip reader through the restricted unpickler;
Megatron's ``args`` and RNG states become inert placeholders (:mod:`megatron_layout`). An
uploaded set names each rank file by its folder, ``mp_rank_TT_PPP/model_optim_rng.pt``; a
``torch_dist`` iteration (a DCP folder) is :mod:`megatron_dist`'s.

The merged view: each parameter's TP shards are joined along its partition dim (column-parallel
dim 0, row-parallel dim 1; SwiGLU's ``linear_fc1`` as [gate; up] of the whole; vocab-parallel
embeddings and output layer along dim 0 with the padding rows cut to ``args.vocab_size`` when it
was saved), replicated ones taken from TP rank 0, and each pipeline stage's decoder layers
renumbered after the stages before it. One tensor is read at a time: a join costs its result
plus one shard.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES, TensorInfo, guess_kind
from app.engine.readers.base import Parsed
from app.engine.readers.megatron_layout import (
    INERT_GLOBALS,
    VOCAB_KEYS,
    MegatronArgs,
    layer_index,
    partition,
    read_args,
)
from app.engine.readers.ranges import read_into
from app.engine.readers.source import Located, Source, SourceExtras
from app.engine.readers.torch_zip import ZipReader
from app.engine.readers.unpickler import TensorRef

if TYPE_CHECKING:
    import torch

__all__ = [
    "TRACKER",
    "MegatronFolder",
    "MegatronReader",
    "iteration_dir",
    "megatron_folder",
    "open_megatron",
]

TRACKER = "latest_checkpointed_iteration.txt"
RANK_FILE = "model_optim_rng.pt"
_ITER_DIR = re.compile(r"iter_(\d+)|release")
_RANK_DIR = re.compile(r"mp_rank_(\d{2})(?:_(\d{3}))?(_\d{3})?")


@dataclass(frozen=True)
class MegatronFolder:
    """One iteration of a Megatron checkpoint: its rank files by (tp, pp).

    Attributes:
        root: the iteration folder (None: a set of files, as an upload stores them).
        iteration: the iteration its folder names (None: read from the rank files).
        files: each rank's ``model_optim_rng.pt``, by (tp, pp).
    """

    root: Path | None
    iteration: int | str | None
    files: dict[tuple[int, int], Path]

    @staticmethod
    def member(at: tuple[int, int]) -> str:
        """A rank file's name in the set: ``mp_rank_TT_PPP/model_optim_rng.pt``."""
        return f"mp_rank_{at[0]:02d}_{at[1]:03d}/{RANK_FILE}"


def iteration_dir(path: Path) -> Path | None:
    """The iteration folder the tracker file in ``path`` names, ``path`` itself when it is
    an ``iter_N``/``release`` folder, else None.

    Raises:
        UnreadableCheckpointError: the tracker names an iteration the folder does not hold.
    """
    tracker = path / TRACKER
    if tracker.is_file():
        text = tracker.read_text(errors="replace").strip()[:64]
        name = (
            "release" if text == "release" else f"iter_{int(text):07d}" if text.isdigit() else None
        )
        if name is None or not (path / name).is_dir():
            raise UnreadableCheckpointError(
                f"{TRACKER} names iteration {text!r}, which this folder does not hold"
            )
        return path / name
    return path if _ITER_DIR.fullmatch(path.name) else None


def _rank_at(folder: str, where: str) -> tuple[int, int] | None:
    """(tp, pp) of a rank folder's name, or None when it is not one.

    Raises:
        UnreadableCheckpointError: an expert-parallel rank folder.
    """
    match = _RANK_DIR.fullmatch(folder)
    if match is None:
        return None
    if match.group(3):
        raise UnreadableCheckpointError(
            f"{where}: expert-parallel Megatron checkpoints are not read yet"
        )
    return int(match.group(1)), int(match.group(2) or 0)


def _rank_set(files: Mapping[str, Path]) -> MegatronFolder | None:
    """The rank files among a set's ``relative name -> path`` (``mp_rank_TT_PPP/
    model_optim_rng.pt``, perhaps under ``iter_N/``), or None when it holds none."""
    found: dict[tuple[int, int], Path] = {}
    iterations = set()
    for name, path in files.items():
        parts = name.split("/")
        if len(parts) < 2 or parts[-1] != RANK_FILE:
            continue
        at = _rank_at(parts[-2], name)
        if at is None:
            continue
        if at in found:
            raise UnreadableCheckpointError(
                f"the set holds rank {MegatronFolder.member(at)} twice (two iterations?)"
            )
        found[at] = path
        if len(parts) > 2 and _ITER_DIR.fullmatch(parts[-3]):
            iterations.add(parts[-3])
    if not found:
        return None
    only = iterations.pop() if len(iterations) == 1 else None
    iteration = None if only is None else "release" if only == "release" else int(only[5:])
    return MegatronFolder(None, iteration, found)


def megatron_folder(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
) -> MegatronFolder | None:
    """The checkpoint at ``path`` (a folder with the tracker file, an ``iter_N``/``release``
    folder of ``mp_rank_*`` folders, or one rank's ``model_optim_rng.pt`` in one; or a set of
    rank files: name -> path, the names ``mp_rank_TT_PPP/model_optim_rng.pt`` as an upload
    keeps them, or a list of paths, each in its ``mp_rank_TT_PPP`` folder), or None when it
    is not a Megatron checkpoint.

    Raises:
        UnreadableCheckpointError: it is one, but the tracker or the rank folders disagree.
    """
    if isinstance(path, Mapping):
        return _rank_set({str(k): Path(v) for k, v in path.items()})
    if not isinstance(path, str | os.PathLike):
        paths = [Path(p) for p in path]
        return _rank_set({f"{p.parent.name}/{p.name}": p for p in paths})
    path = Path(path)
    if path.name == RANK_FILE and _RANK_DIR.fullmatch(path.parent.name):
        if not (path.parent.parent.is_dir() and iteration_dir(path.parent.parent)):
            # one rank's file alone in its rank folder (as a job links a TP 1 x PP 1 upload)
            return _rank_set({f"{path.parent.name}/{RANK_FILE}": path})
        path = path.parent.parent  # one rank's file: the whole iteration it belongs to
    if not path.is_dir():
        return None
    folder = iteration_dir(path)
    if folder is None or (folder / ".metadata").is_file():  # None, or torch_dist: a DCP folder
        return None
    files: dict[tuple[int, int], Path] = {}
    for child in sorted(folder.iterdir()):
        if not (child / RANK_FILE).is_file():
            continue
        at = _rank_at(child.name, child.name)
        if at is not None:
            files[at] = child / RANK_FILE
    if not files:
        if path.joinpath(TRACKER).is_file():
            raise UnreadableCheckpointError(f"{folder.name} holds no mp_rank_*/{RANK_FILE}")
        return None
    iteration: int | str = "release" if folder.name == "release" else int(folder.name[5:])
    return MegatronFolder(folder, iteration, files)


@dataclass(frozen=True)
class MegatronTensor:
    """One merged tensor: its shards in TP order and how they join.

    Attributes:
        key: its merged name (layers renumbered).
        how: ``replicated``, ``column``/``vocab``/``gated`` (dim 0) or ``row`` (dim 1).
        parts: (rank file's reader, tensor) per TP rank; one for ``replicated``.
        shape: the merged shape (vocab padding cut).
        dtype: the shards' dtype.
    """

    key: str
    how: str
    parts: tuple[tuple[ZipReader, TensorRef], ...]
    shape: tuple[int, ...]
    dtype: str


class MegatronReader:
    """Reads one merged tensor from its TP shards."""

    format = "megatron"

    def __init__(self, readers: Sequence[ZipReader]) -> None:
        self._readers = list(readers)
        self.parsed = Parsed(root=None)

    def read(self, handle: MegatronTensor) -> torch.Tensor:
        import torch

        if handle.how == "replicated":
            reader, ref = handle.parts[0]
            return reader.read(ref)
        out = torch.empty(handle.shape, dtype=getattr(torch, handle.dtype))
        dim = 1 if handle.how == "row" else 0
        if handle.how == "gated":
            half, at = handle.shape[0] // 2, 0
            for reader, ref in handle.parts:
                gate, up = reader.read(ref).chunk(2, dim=0)
                out.narrow(0, at, gate.shape[0]).copy_(gate)
                out.narrow(0, half + at, up.shape[0]).copy_(up)
                at += gate.shape[0]
            return out
        spans = self.byte_ranges(handle)
        if spans is not None:  # a dim-0 join: each shard's rows straight into the result
            flat, item, at = out.view(-1), DTYPE_SIZES[handle.dtype], 0
            for path, offset, length in spans:
                dest = flat.narrow(0, at, length // item)
                read_into(dest, path, offset, length, what=f"a shard of {handle.key!r}")
                at += length // item
            return out
        at = 0
        for reader, ref in handle.parts:
            take = min(ref.shape[dim], handle.shape[dim] - at)
            if take <= 0:
                break
            out.narrow(dim, at, take).copy_(reader.read(ref).narrow(dim, 0, take))
            at += take
        return out

    def byte_range(self, handle: MegatronTensor) -> tuple[Path, int, int] | None:
        if handle.how == "replicated":
            reader, ref = handle.parts[0]
            return reader.byte_range(ref)
        return None

    def byte_ranges(self, handle: MegatronTensor) -> list[tuple[Path, int, int]] | None:
        """The shards' bytes end to end, for a join along dim 0 (padding rows left out)."""
        if handle.how == "replicated":
            span = self.byte_range(handle)
            return [span] if span is not None else None
        if handle.how not in ("column", "vocab"):
            return None
        row = math.prod(handle.shape[1:]) * DTYPE_SIZES[handle.dtype]
        spans, rows = [], handle.shape[0]
        for reader, ref in handle.parts:
            span = reader.byte_range(ref)
            if span is None:
                return None
            take = min(ref.shape[0], rows)
            if take > 0:
                spans.append((span[0], span[1], take * row))
            rows -= take
        return spans

    def storage_id(self, handle: MegatronTensor) -> tuple[str, ...]:
        return ("megatron", handle.key)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


def _stage_keys(model: Mapping[str, Any], offset: int) -> tuple[dict[str, str], int, list[str]]:
    """A stage's tensors, saved key -> merged key; its layer count; its non-tensor keys."""
    keys, layers, other = {}, set(), []
    for key, value in model.items():
        # Transformer Engine's FP8 metadata: a byte tensor, a BytesIO or None per module
        if not isinstance(value, TensorRef) or key.endswith("._extra_state"):
            other.append(key)
            continue
        found = layer_index(key)
        if found is None:
            keys[key] = key
        else:
            layers.add(found[0])
            keys[key] = f"decoder.layers.{found[0] + offset}.{found[1]}"
    return keys, len(layers), other


def _model_of(reader: ZipReader, where: str) -> dict[str, Any]:
    root = reader.parsed.root
    model = root.get("model") if isinstance(root, dict) else None
    if not isinstance(model, dict):
        hint = (
            " (virtual pipeline stages: model0, model1…)"
            if isinstance(root, dict) and "model0" in root
            else ""
        )
        raise UnreadableCheckpointError(f"{where} holds no 'model' state dict{hint}; not read yet")
    return model


def _global_shape(
    how: str, shapes: list[tuple[int, ...]], key: str, args: MegatronArgs
) -> tuple[int, ...]:
    first = shapes[0]
    if how == "replicated":
        return first
    dim = 1 if how == "row" else 0
    if any(
        len(s) != len(first) or s[:dim] + s[dim + 1 :] != first[:dim] + first[dim + 1 :]
        for s in shapes
    ):
        raise UnreadableCheckpointError(f"{key}: the TP shards' shapes do not join: {shapes}")
    total = sum(s[dim] for s in shapes)
    if how == "vocab" and args.vocab_size is not None and args.vocab_size <= total:
        total = args.vocab_size
    return tuple(total if d == dim else n for d, n in enumerate(first))


def _merge(
    readers: dict[tuple[int, int], ZipReader], args: MegatronArgs
) -> tuple[dict[str, MegatronTensor], list[str], dict[str, int]]:
    """Every merged tensor, the non-tensor model keys left out, and layers per stage."""
    tensors: dict[str, MegatronTensor] = {}
    other: list[str] = []
    layers: dict[str, int] = {}
    offset = 0
    for pp in range(args.pipeline_parallel):
        models = [
            _model_of(readers[(tp, pp)], f"mp_rank_{tp:02d}_{pp:03d}")
            for tp in range(args.tensor_parallel)
        ]
        keys, count, extra = _stage_keys(models[0], offset)
        other += extra
        layers[str(pp)] = count
        for saved, key in keys.items():
            if key in tensors:  # a non-layer key on two stages (tied embeddings): the first
                continue
            how = partition(saved, args.gated) if args.tensor_parallel > 1 else "replicated"
            if saved in VOCAB_KEYS:  # with TP 1 too: the padding rows are cut
                how = "vocab"
            ranks = [0] if how == "replicated" else range(args.tensor_parallel)
            parts = []
            for tp in ranks:
                ref = models[tp].get(saved)
                if not isinstance(ref, TensorRef):
                    raise UnreadableCheckpointError(f"TP rank {tp} of stage {pp} lacks {saved!r}")
                parts.append((readers[(tp, pp)], ref))
            shape = _global_shape(how, [ref.shape for _, ref in parts], key, args)
            tensors[key] = MegatronTensor(key, how, tuple(parts), shape, parts[0][1].dtype)
        offset += count
    if args.num_layers is not None and offset != args.num_layers:
        raise UnreadableCheckpointError(
            f"the stages hold {offset} decoder layers but args.num_layers is {args.num_layers}"
        )
    return tensors, sorted(set(other)), layers


def _left_out(readers: Sequence[ZipReader]) -> dict[str, dict[str, int]]:
    """Top-level entries other than the model, over every rank file: tensors, bytes, values."""
    out: dict[str, dict[str, int]] = {}
    for reader in readers:
        root = reader.parsed.root
        for top, value in root.items() if isinstance(root, dict) else ():
            if top == "model":
                continue
            tally = out.setdefault(str(top), {"tensors": 0, "bytes": 0, "values": 0})
            stack = [value]
            while stack:
                node = stack.pop()
                if isinstance(node, TensorRef):
                    tally["tensors"] += 1
                    tally["bytes"] += math.prod(node.shape) * DTYPE_SIZES[node.dtype]
                elif isinstance(node, dict):
                    stack.extend(node.values())
                elif isinstance(node, list | tuple):
                    stack.extend(node)
                else:
                    tally["values"] += 1
    return out


def _open_ranks(folder: MegatronFolder) -> tuple[dict[tuple[int, int], ZipReader], MegatronArgs]:
    readers: dict[tuple[int, int], ZipReader] = {}
    try:
        for at, path in sorted(folder.files.items()):
            readers[at] = ZipReader(path, extra=INERT_GLOBALS)
        first = readers[min(readers)]
        args = read_args(first.parsed.root, MegatronFolder.member(min(readers)))
        grid = {(t, p) for t in range(args.tensor_parallel) for p in range(args.pipeline_parallel)}
        if set(readers) != grid:
            missing = sorted(grid - set(readers))
            raise UnreadableCheckpointError(
                f"args say TP {args.tensor_parallel} x PP {args.pipeline_parallel}, but the "
                f"folder holds {len(readers)} rank files"
                + (f" (missing (tp, pp) {missing[:4]})" if missing else "")
            )
        if args.virtual_pipeline:
            raise UnreadableCheckpointError(
                "virtual pipeline stages (interleaved) are not read yet"
            )
        return readers, args
    except BaseException:
        for reader in readers.values():
            reader.close()
        raise


def _iteration(folder: MegatronFolder, root: Any) -> int | str | None:
    """The iteration its folder names, else the one the first rank file saved."""
    if folder.iteration is not None:
        return folder.iteration
    saved = root.get("iteration") if isinstance(root, dict) else None
    return saved if isinstance(saved, int) and not isinstance(saved, bool) else None


def open_megatron(folder: MegatronFolder) -> Source:
    """Open a Megatron checkpoint's rank files as one :class:`Source` of merged tensors.

    Raises:
        UnsafeCheckpointError: a rank file's pickle names anything that could run code.
        UnreadableCheckpointError: ranks missing, shards that do not join, an unknown split.
    """
    readers, args = _open_ranks(folder)
    try:
        tensors, other, layers = _merge(readers, args)
        reader = MegatronReader(list(readers.values()))
        first = readers[(0, 0)].parsed.root
        left_out = _left_out(list(readers.values()))
        if other:
            left_out["model"] = {"tensors": 0, "bytes": 0, "values": len(other)}
        layout = {
            "format": "megatron",
            "version": str(first.get("checkpoint_version")),
            "iteration": _iteration(folder, first),
            "world_size": len(readers),
            "files": len(readers),
            "tensor_parallel": args.tensor_parallel,
            "pipeline_parallel": args.pipeline_parallel,
            "layers_per_stage": layers,
            "vocab": {
                "padded": args.padded_vocab_size or 0,
                "kept": args.vocab_size or args.padded_vocab_size or 0,
            },
            "chunks": {k: len(t.parts) for k, t in tensors.items()},
            "left_out": left_out,
        }
        ignored = {
            top: "megatron: " + ", ".join(f"{n} {what}" for what, n in tally.items() if n)
            for top, tally in left_out.items()
        }
        ranks = sorted(folder.files)
        return Source(
            [folder.files[at] for at in ranks],
            "megatron",
            [reader],
            {k: Located(reader, t) for k, t in tensors.items()},
            {
                k: TensorInfo(k, t.shape, t.dtype, guess_kind(k, t.dtype))
                for k, t in tensors.items()
            },
            SourceExtras(
                entry="model",
                candidates=["model"],
                ignored=ignored,
                layout=layout,
                names=[MegatronFolder.member(at) for at in ranks],
            ),
        )
    except BaseException:
        for r in readers.values():
            r.close()
        raise
