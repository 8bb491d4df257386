"""DeepSpeed ZeRO checkpoint folders, read without DeepSpeed.

A folder holding ``latest`` and ``global_stepN/`` (or that tag folder itself, or its files as
an uploaded set): ``mp_rank_00_model_states.pt`` (ZeRO 1/2) or one
``zero_pp_rank_R_mp_rank_00_model_states.pt`` per rank (ZeRO 3), and one
``*zero_pp_rank_R_mp_rank_00_optim_states.pt`` per rank. Every file is a ``torch.save`` zip
read by the zip reader, its pickle by the restricted unpickler with DeepSpeed's own objects as
inert placeholders.

- ``entry: auto`` gives what DeepSpeed's ``get_fp32_state_dict_from_zero_checkpoint`` gives:
  buffers (fp32), frozen parameters (16-bit, as saved), the fp32 master weights rebuilt from
  the partitions (:mod:`app.engine.readers.zero_layout`), then the tied names. Each tensor is
  read from its pieces alone: memory is the largest tensor, never the whole model.
- ``entry: module`` gives the 16-bit module weights of rank 0's model states (ZeRO 1/2; ZeRO 3
  saves them partitioned away, so that is refused with the way out).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES, TensorInfo, guess_kind
from app.engine.readers.base import Parsed
from app.engine.readers.ranges import read_into
from app.engine.readers.source import Located, Source, SourceExtras
from app.engine.readers.torch_zip import ZipReader
from app.engine.readers.unpickler import TensorRef
from app.engine.readers.zero_layout import (
    DEEPSPEED_GLOBALS,
    Piece,
    ZeroTensor,
    frozen_tensors,
    trainable_tensors,
    zero_stage,
)

if TYPE_CHECKING:
    import torch

__all__ = ["ZeroReader", "open_zero", "zero_files"]

_MODEL = re.compile(r"(?:zero_pp_rank_(\d+)_)?mp_rank_(\d+)_model_states\.pt")
_OPTIM = re.compile(r"(?:[a-z0-9]+_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt")
_PIPELINE = re.compile(r"layer_\d+-model_\d+-model_states\.pt")
_TAG = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_MAX_FILES = 1 << 16


def _is_zero_name(name: str) -> bool:
    return bool(_MODEL.fullmatch(name) or _OPTIM.fullmatch(name) or _PIPELINE.fullmatch(name))


def _tag_folder(p: Path) -> Path | None:
    """The checkpoint's tag folder: ``p`` itself, or the folder ``p``'s ``latest`` names."""
    if p.is_file() and p.name == "latest":
        p = p.parent
    if not p.is_dir():
        return None
    latest = p / "latest"
    if latest.is_file() and latest.stat().st_size <= 256:
        tag = latest.read_text(errors="replace").strip()
        if _TAG.fullmatch(tag) and tag not in (".", "..") and (p / tag).is_dir():
            return p / tag
    return p


def zero_files(
    path: str | os.PathLike[str] | Sequence[Path] | Mapping[str, Path],
) -> dict[str, Path] | None:
    """Name -> path of a DeepSpeed checkpoint's files, or None when ``path`` is not one.

    ``path`` is the folder holding ``latest``, that file, the tag folder (``global_stepN``),
    or the files themselves (a list, or name -> path, as an upload stores them).
    """
    if isinstance(path, Mapping):
        files = {str(k): Path(v) for k, v in path.items()}
    elif isinstance(path, str | os.PathLike):
        folder = _tag_folder(Path(path))
        if folder is None:
            return None
        files = {c.name: c for c in sorted(folder.iterdir()) if c.is_file()}
    else:
        files = {Path(p).name: Path(p) for p in path}
    found = {n: p for n, p in files.items() if _is_zero_name(n)}
    if not any(_OPTIM.fullmatch(n) for n in found) or not any(_MODEL.fullmatch(n) for n in found):
        return None
    return found


class ZeroReader:
    """Reads one merged tensor of a ZeRO checkpoint from its pieces, one file range at a time."""

    format = "deepspeed"

    def __init__(self, readers: Sequence[ZipReader], paths: Sequence[Path]) -> None:
        # Parsed, then closed: a piece's byte range needs no open file, so a run of any world
        # size holds no descriptors between reads.
        self._readers = list(readers)
        self._paths = list(paths)
        self.parsed = Parsed(root=None)
        self.close()

    def _piece_range(
        self, file: int, ref: TensorRef, start: int, count: int
    ) -> tuple[Path, int, int] | None:
        span = self._readers[file].byte_range(ref)
        if span is None:
            return None
        path, offset, _ = span
        item = DTYPE_SIZES[ref.dtype]
        return path, offset + start * item, count * item

    def read(self, handle: ZeroTensor) -> torch.Tensor:
        import torch

        out = torch.empty(math.prod(handle.shape), dtype=getattr(torch, handle.dtype))
        at = 0
        for piece in handle.pieces:
            dest = out.narrow(0, at, piece.count)
            span = self._piece_range(piece.file, piece.ref, piece.start, piece.count)
            if span is not None:  # straight into the result: no second copy of the piece
                path, offset, length = span
                read_into(dest, path, offset, length, what=f"a partition of {handle.name!r}")
            else:  # a fragment not in C order: read it whole (it is at most one tensor)
                path = self._paths[piece.file]
                with closing(ZipReader(path, extra=DEEPSPEED_GLOBALS)) as reader:
                    whole = reader.read(piece.ref).reshape(-1)
                dest.copy_(whole.narrow(0, piece.start, piece.count))
            at += piece.count
        out = out.view(handle.shape)
        return out.to(getattr(torch, handle.cast)) if handle.cast else out

    def byte_ranges(self, handle: ZeroTensor) -> list[tuple[Path, int, int]] | None:
        """The tensor's bytes as ranges to read end to end (its pieces), when none is cast."""
        if handle.cast:
            return None
        spans = []
        for piece in handle.pieces:
            span = self._piece_range(piece.file, piece.ref, piece.start, piece.count)
            if span is None:
                return None
            spans.append(span)
        return spans

    def byte_range(self, handle: ZeroTensor) -> tuple[Path, int, int] | None:
        spans = self.byte_ranges(handle)
        return spans[0] if spans is not None and len(spans) == 1 else None

    def storage_id(self, handle: ZeroTensor) -> tuple[str, ...]:
        return ("zero", handle.name)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()


def _ranked(files: Mapping[str, Path], pattern: re.Pattern[str]) -> list[tuple[int, str]]:
    """(dp rank, name) of the files ``pattern`` matches, in rank order; tensor parallel refused."""
    found = []
    for name in files:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        if int(m.group(2)) != 0:
            raise UnreadableCheckpointError(
                f"{name}: a tensor-parallel DeepSpeed checkpoint (mp_rank > 0); Graft reads "
                "ZeRO data parallel checkpoints only (as zero_to_fp32.py does)"
            )
        found.append((int(m.group(1) or 0), name))
    found.sort()
    if [r for r, _ in found] != list(range(len(found))):
        raise UnreadableCheckpointError(
            f"DeepSpeed checkpoint: ranks {[r for r, _ in found]} are not 0..{len(found) - 1} "
            "(a rank's file is missing?)"
        )
    return found


def _root(reader: ZipReader, name: str) -> dict[str, Any]:
    root = reader.parsed.root
    if not isinstance(root, dict):
        raise UnreadableCheckpointError(f"{name} does not hold a dict")
    return root


def _module(model: dict[str, Any], stage: int) -> dict[str, TensorRef]:
    module = model.get("module")
    if not isinstance(module, dict) or not all(
        isinstance(k, str) and isinstance(v, TensorRef) for k, v in module.items()
    ):
        raise UnreadableCheckpointError("the model states hold no module state dict")
    if stage == 3 and any(0 in v.shape for v in module.values()):
        raise UnreadableCheckpointError(
            "entry 'module': ZeRO 3 saves no whole 16-bit weights (each rank keeps its own "
            "slice, in the optimizer states); use entry: auto for the fp32 master weights"
        )
    return module


def _merged(
    models: list[tuple[int, dict[str, Any]]],
    optims: list[tuple[int, dict[str, Any]]],
    stage: int,
) -> tuple[dict[str, ZeroTensor], dict[str, Any]]:
    """What ``get_fp32_state_dict_from_zero_checkpoint`` returns, as handles, in its order."""
    file0, model = models[0]
    module = _module(model, 0)
    names = model.get("buffer_names") or []
    if not isinstance(names, list):
        raise UnreadableCheckpointError("DeepSpeed checkpoint: buffer_names is malformed")
    wanted = {n for n in names if isinstance(n, str)}
    tensors: dict[str, ZeroTensor] = {}
    for name, ref in module.items():  # in the module's order, floats as fp32 (as DeepSpeed)
        if name in wanted:
            floating = ref.dtype.startswith(("float", "bfloat")) and ref.dtype != "float32"
            tensors[name] = _whole(name, file0, ref, "float32" if floating else None)
    frozen = frozen_tensors(models, stage)
    tensors.update((t.name, t) for t in frozen)
    tensors.update((t.name, t) for t in trainable_tensors(model, optims, stage))
    from_module = []
    if stage == 1:  # ZeRO 1 saves no frozen_param_shapes: its frozen weights are the module's
        for name, ref in module.items():
            if name not in tensors and name not in (model.get("shared_params") or {}):
                tensors[name] = _whole(name, file0, ref)
                from_module.append(name)
    shared = model.get("shared_params") or {}
    if not isinstance(shared, dict):
        raise UnreadableCheckpointError("DeepSpeed checkpoint: shared_params is malformed")
    tied = {}
    for alias, name in shared.items():
        if isinstance(alias, str) and isinstance(name, str) and name in tensors:
            tensors[alias] = tensors[name]
            tied[alias] = name
    facts = {"frozen": [t.name for t in frozen] + from_module, "tied": tied, "buffers": wanted}
    return tensors, facts


def _whole(name: str, file: int, ref: TensorRef, cast: str | None = None) -> ZeroTensor:
    """A tensor saved whole in one file (a buffer, a ZeRO 1/2 frozen weight)."""
    return ZeroTensor(
        name, ref.shape, ref.dtype, (Piece(file, ref, 0, math.prod(ref.shape)),), cast
    )


def _open_all(files: Mapping[str, Path], names: list[str]) -> list[ZipReader]:
    readers: list[ZipReader] = []
    try:
        for name in names:
            readers.append(ZipReader(files[name], extra=DEEPSPEED_GLOBALS))
    except BaseException:
        for reader in readers:
            reader.close()
        raise
    return readers


def _count(value: Any, default: int | None) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    return value if ok else default


def _layout(models: list[tuple[int, dict[str, Any]]], stage: int, world: int) -> dict[str, Any]:
    model = models[0][1]
    dims = model.get("checkpoint_parallel_dimensions")
    dims = dims if isinstance(dims, dict) else {}
    version = model.get("ds_version")
    return {
        "format": "deepspeed",
        "version": version[:40] if isinstance(version, str) else None,
        "zero_stage": stage,
        "world_size": world,
        "tp_degree": _count(dims.get("tp_degree", model.get("mp_world_size")), 1),
        "pp_degree": _count(dims.get("pp_degree"), 1),
        "global_steps": _count(model.get("global_steps"), None),
    }


def _optimizer_states(
    readers: list[ZipReader], names: list[str], start: int
) -> list[tuple[int, dict[str, Any]]]:
    """(file index, ``optimizer_state_dict``) of every rank, in rank order."""
    optims = []
    for i, name in enumerate(names, start=start):
        optim = _root(readers[i], name).get("optimizer_state_dict")
        if not isinstance(optim, dict):
            raise UnreadableCheckpointError(f"{name} holds no optimizer_state_dict")
        optims.append((i, optim))
    return optims


def _stage(models: list[tuple[int, Any]], optims: list[tuple[int, dict[str, Any]]]) -> int:
    """The one ZeRO stage every rank records, checked against the model-states files."""
    stages = {zero_stage(optim) for _, optim in optims}
    if len(stages) != 1:
        raise UnreadableCheckpointError(
            f"the ranks' optimizer states record ZeRO stages {sorted(stages)}: the files do "
            "not belong together"
        )
    stage = stages.pop()
    if (stage == 3) != (len(models) > 1) and len(optims) > 1:
        raise UnreadableCheckpointError(
            f"ZeRO stage {stage} with {len(models)} model-states files: the files do not "
            "belong together"
        )
    return stage


def open_zero(files: Mapping[str, Path], entry: str = "auto") -> Source:
    """Open a DeepSpeed ZeRO checkpoint's files as one :class:`Source`.

    Args:
        files: name -> path of the tag folder's files (model and optimizer states).
        entry: ``auto`` (the fp32 master weights, as ``zero_to_fp32.py`` rebuilds them) or
            ``module`` (the 16-bit module weights of the model states, ZeRO 1/2).

    Raises:
        UnsafeCheckpointError: a pickle names anything but tensors and DeepSpeed's records.
        UnreadableCheckpointError: files missing or disagreeing, a pipeline- or
            tensor-parallel checkpoint, or an entry this checkpoint does not hold.
    """
    if entry not in ("auto", "", "fp32", "module"):
        raise UnreadableCheckpointError(
            f"entry {entry!r}: a DeepSpeed checkpoint offers 'auto' or 'fp32' (the fp32 master "
            "weights) and 'module' (the 16-bit module weights)"
        )
    if any(_PIPELINE.fullmatch(n) for n in files):
        raise UnreadableCheckpointError(
            "a pipeline-parallel DeepSpeed checkpoint (layer_*-model_states.pt); Graft reads "
            "ZeRO data parallel checkpoints only"
        )
    if len(files) > _MAX_FILES:
        raise UnreadableCheckpointError(f"DeepSpeed checkpoint with {len(files)} files")
    model_names = [n for _, n in _ranked(files, _MODEL)]
    optim_names = [n for _, n in _ranked(files, _OPTIM)]
    readers = _open_all(files, model_names + optim_names)
    try:
        models = [(i, _root(readers[i], n)) for i, n in enumerate(model_names)]
        optims = _optimizer_states(readers, optim_names, start=len(model_names))
        stage = _stage(models, optims)
        if entry == "module":
            module = _module(models[0][1], stage)
            entries = {k: Located(readers[0], ref) for k, ref in module.items()}
            for reader in readers[1:]:  # only rank 0's model states are read
                reader.close()
            kept: list[Any] = [readers[0]]
            names = models[0][1].get("buffer_names")
            facts: dict[str, Any] = {"buffers": names if isinstance(names, list) else []}
            infos = {k: (ref.shape, ref.dtype) for k, ref in module.items()}
        else:
            merged, facts = _merged(models, optims, stage)
            zero = ZeroReader(readers, [files[n] for n in model_names + optim_names])
            entries = {k: Located(zero, t) for k, t in merged.items()}
            kept = [zero]
            infos = {k: (t.shape, t.cast or t.dtype) for k, t in merged.items()}
        buffers = set(facts.pop("buffers"))
        tensors = {
            k: TensorInfo(k, s, d, "buffer" if k in buffers else guess_kind(k, d))
            for k, (s, d) in infos.items()
        }
        chosen = "module" if entry == "module" else "fp32"
        layout = {**_layout(models, stage, len(optims)), "entry": chosen, **facts}
        return Source(
            [files[n] for n in model_names + optim_names],
            "deepspeed",
            kept,
            entries,
            tensors,
            SourceExtras(
                entry=chosen,
                candidates=["fp32", "module"],
                ignored={
                    "optimizer_state_dict": f"deepspeed: {len(optims)} ranks' optimizer state"
                },
                layout=layout,
            ),
        )
    except BaseException:
        for reader in readers:
            reader.close()
        raise
