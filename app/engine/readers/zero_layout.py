"""Where every tensor of a DeepSpeed ZeRO checkpoint lies: which partitions, at which offsets.

The files are read as plain data (restricted unpickler, DeepSpeed's own objects as inert
placeholders); nothing here reads tensor bytes. What ``zero_to_fp32.py`` rebuilds by
concatenating whole partitions is described instead as :class:`Piece` lists, one per tensor,
so a tensor costs its own size when it is read:

- ZeRO 1/2: each param group is one flat fp32 vector cut into one partition per rank (the last
  one may be short: DeepSpeed drops its padding). Parameters follow each other in
  ``param_shapes`` order, each followed by its alignment padding.
- ZeRO 3: every parameter is cut into ``ceil(numel / world)`` elements per rank; each rank's
  flat groups hold its cuts end to end. Frozen parameters are cut the same way, into
  ``frozen_param_fragments`` of every rank's model states.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.readers.placeholders import Placeholder, placeholder_globals
from app.engine.readers.unpickler import TensorRef

__all__ = [
    "DEEPSPEED_GLOBALS",
    "Piece",
    "ZeroTensor",
    "frozen_tensors",
    "trainable_tensors",
    "zero_stage",
]

# What DeepSpeed pickles besides tensors and plain containers: kept as inert placeholders.
DEEPSPEED_GLOBALS = placeholder_globals(
    [
        "deepspeed.runtime.fp16.loss_scaler.LossScaler",
        "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
        "deepspeed.runtime.zero.config.ZeroStageEnum",
        "deepspeed.utils.tensor_fragment.fragment_address",
        "deepspeed.runtime.config.DeepSpeedConfig",
        "argparse.Namespace",  # Megatron-DeepSpeed saves its args in the model states
    ]
)
_MAX_WORLD = 1 << 16


@dataclass(frozen=True)
class Piece:
    """``count`` elements from element ``start`` of the flat tensor ``ref`` in file ``file``."""

    file: int
    ref: TensorRef
    start: int
    count: int


@dataclass(frozen=True)
class ZeroTensor:
    """One tensor of the merged state dict: its shape, stored dtype and pieces, in order.

    ``cast`` names the dtype it is returned in when it differs (buffers come out fp32, as
    ``zero_to_fp32`` returns them).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    pieces: tuple[Piece, ...]
    cast: str | None = None


def zero_stage(optim: dict[str, Any]) -> int:
    """The ZeRO stage an optimizer-states file records (``ZeroStageEnum`` or a plain int)."""
    stage = optim.get("zero_stage")
    value = stage.first_arg if isinstance(stage, Placeholder) else stage
    if value not in (1, 2, 3) or isinstance(value, bool):
        raise UnreadableCheckpointError(
            "the optimizer states record no ZeRO stage 1, 2 or 3: not a ZeRO checkpoint "
            "(DeepSpeed's BF16_Optimizer and non-ZeRO runs save whole weights in model_states: "
            "read those with entry: module)"
        )
    return int(value)


def _shape(value: Any, name: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63 for v in value
    ):
        raise UnreadableCheckpointError(f"DeepSpeed checkpoint: the shape of {name!r:.80} is bad")
    return tuple(value)


def _flat(value: Any, what: str) -> TensorRef:
    if not isinstance(value, TensorRef):
        raise UnreadableCheckpointError(f"DeepSpeed checkpoint: {what} is not a tensor")
    return value


def _span(parts: Sequence[tuple[int, TensorRef]], start: int, count: int, name: str) -> list[Piece]:
    """The pieces of ``parts`` laid end to end that cover ``[start, start + count)``."""
    out: list[Piece] = []
    base = 0
    for file, ref in parts:
        size = math.prod(ref.shape)
        lo, hi = max(start, base), min(start + count, base + size)
        if lo < hi:
            out.append(Piece(file, ref, lo - base, hi - lo))
        base += size
    if sum(p.count for p in out) != count:
        raise UnreadableCheckpointError(
            f"DeepSpeed checkpoint: {name!r:.80} lies past the end of its flat partitions "
            "(truncated or mismatched files?)"
        )
    return out


def _param_groups(model: dict[str, Any]) -> list[dict[str, tuple[int, ...]]]:
    groups = model.get("param_shapes")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise UnreadableCheckpointError(
            "the model states hold no param_shapes: not a ZeRO checkpoint (read it with "
            "entry: module)"
        )
    return [{str(k): _shape(v, str(k)) for k, v in g.items()} for g in groups]


def _dtype(pieces: Sequence[Piece], name: str) -> str:
    dtypes = {p.ref.dtype for p in pieces}
    if len(dtypes) > 1:
        raise UnreadableCheckpointError(f"DeepSpeed checkpoint: {name!r:.80} mixes dtypes")
    return dtypes.pop() if dtypes else "float32"


def _stage12(
    groups: list[dict[str, tuple[int, ...]]],
    optims: Sequence[tuple[int, dict[str, Any]]],
    world: int,
) -> list[ZeroTensor]:
    """ZeRO 1/2: each group's rank partitions end to end, parameters with their paddings."""
    flats = [(file, o.get("single_partition_of_fp32_groups")) for file, o in optims]
    if not all(isinstance(f, list) and len(f) == len(groups) for _, f in flats):
        raise UnreadableCheckpointError(
            "DeepSpeed checkpoint: single_partition_of_fp32_groups disagrees with param_shapes"
        )
    paddings = optims[0][1].get("param_alignment_paddings")
    out = []
    for g, shapes in enumerate(groups):
        parts = [(file, _flat(f[g], f"partition {g}")) for file, f in flats]  # type: ignore[index]
        pads = paddings[g] if isinstance(paddings, list) and len(paddings) > g else None
        if pads is not None and (
            not isinstance(pads, list)
            or len(pads) != len(shapes)
            or not all(isinstance(p, int) and p >= 0 for p in pads)
        ):
            raise UnreadableCheckpointError(
                f"DeepSpeed checkpoint: alignment paddings of group {g} disagree with its params"
            )
        offset = 0
        for i, (name, shape) in enumerate(shapes.items()):
            numel = math.prod(shape)
            pieces = _span(parts, offset, numel, name)
            out.append(ZeroTensor(name, shape, _dtype(pieces, name), tuple(pieces)))
            offset += numel + (pads[i] if pads is not None else 0)
        avail = sum(math.prod(ref.shape) for _, ref in parts)
        align = 2 * world
        if math.ceil(offset / align) != math.ceil(avail / align):
            raise UnreadableCheckpointError(
                f"DeepSpeed checkpoint: group {g} holds {avail} elements, its params {offset}: "
                "the files do not belong together"
            )
    return out


def _stage3(
    groups: list[dict[str, tuple[int, ...]]],
    optims: Sequence[tuple[int, dict[str, Any]]],
    world: int,
) -> list[ZeroTensor]:
    """ZeRO 3: each parameter is ``ceil(numel / world)`` elements of every rank's flat groups."""
    ranks = []
    for file, optim in optims:
        flat = optim.get("fp32_flat_groups")
        if not isinstance(flat, list):
            raise UnreadableCheckpointError("DeepSpeed checkpoint: fp32_flat_groups is missing")
        ranks.append([(file, _flat(t, "an fp32 flat group")) for t in flat])
    totals = {sum(math.prod(ref.shape) for _, ref in parts) for parts in ranks}
    out = []
    offset = 0
    for shapes in groups:
        for name, shape in shapes.items():
            numel = math.prod(shape)
            per_rank = math.ceil(numel / world)
            pieces: list[Piece] = []
            for r, parts in enumerate(ranks):
                take = min(per_rank, numel - r * per_rank)
                if take > 0:
                    pieces += _span(parts, offset, take, name)
            out.append(ZeroTensor(name, shape, _dtype(pieces, name), tuple(pieces)))
            offset += per_rank
    if totals != {offset}:
        raise UnreadableCheckpointError(
            f"DeepSpeed checkpoint: the ranks hold {sorted(totals)} elements each, the params "
            f"{offset}: the files do not belong together"
        )
    return out


def trainable_tensors(
    model: dict[str, Any], optims: Sequence[tuple[int, dict[str, Any]]], stage: int
) -> list[ZeroTensor]:
    """The trained parameters, rebuilt from the fp32 partitions as ``zero_to_fp32`` does.

    Args:
        model: rank 0's model states.
        optims: (file index, ``optimizer_state_dict``) of every rank, in rank order.
        stage: the ZeRO stage.
    """
    world = len(optims)
    if not 0 < world <= _MAX_WORLD:
        raise UnreadableCheckpointError(f"DeepSpeed checkpoint: {world} ranks")
    count = optims[0][1].get("partition_count")
    counts = count if isinstance(count, list) else [count]
    if not counts or not all(isinstance(c, int) for c in counts) or max(counts) != world:
        raise UnreadableCheckpointError(
            f"DeepSpeed checkpoint: partitioned over {count!r:.40} ranks, but {world} ranks' "
            "optimizer states are here (a rank's file missing, or an old run's left over?)"
        )
    groups = _param_groups(model)
    if stage == 3:
        return _stage3(groups, optims, world)
    return _stage12(groups, optims, world)


def frozen_tensors(models: Sequence[tuple[int, dict[str, Any]]], stage: int) -> list[ZeroTensor]:
    """The frozen parameters (not in the optimizer): whole in rank 0's model states for ZeRO
    1/2, cut across every rank's for ZeRO 3. Kept in their 16-bit dtype, as DeepSpeed does."""
    shapes = models[0][1].get("frozen_param_shapes")
    if not shapes:
        return []
    if not isinstance(shapes, dict):
        raise UnreadableCheckpointError("DeepSpeed checkpoint: frozen_param_shapes is malformed")
    fragments = [(file, m.get("frozen_param_fragments")) for file, m in models]
    if not all(isinstance(f, dict) for _, f in fragments):
        raise UnreadableCheckpointError("DeepSpeed checkpoint: frozen_param_fragments is missing")
    out = []
    for name, value in shapes.items():
        shape = _shape(value, str(name))
        numel = math.prod(shape)
        if stage == 3:
            parts = [(file, _flat(f.get(name), f"frozen {name!r:.80}")) for file, f in fragments]  # type: ignore[union-attr]
        else:
            parts = [(fragments[0][0], _flat(fragments[0][1].get(name), f"frozen {name!r:.80}"))]  # type: ignore[union-attr]
        pieces = _span(parts, 0, numel, str(name))
        out.append(ZeroTensor(str(name), shape, _dtype(pieces, str(name)), tuple(pieces)))
    return out
