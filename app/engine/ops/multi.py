"""Multi-tensor and always-on ops: split, merge and the ``transform`` ops, on shapes and tensors.

Each op has a ``describe_*`` twin that works on shapes alone, so planning (which never reads
tensor data) knows every shape and refuses a rule that cannot apply before any tensor moves.
The tensor functions keep values exactly (no arithmetic), return a new contiguous tensor, and
never return a view of their input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.engine._lazy import LazyModule
from app.engine.errors import InvalidRecipeError
from app.engine.recipe.tensor_rules import (
    PermuteRotaryTransform,
    ReshapeTransform,
    SliceTransform,
    TransformRule,
    TransposeTransform,
)

if TYPE_CHECKING:
    import torch
else:  # torch loads on first use: planning (describe_*) never needs it
    torch = LazyModule("torch")

__all__ = [
    "Part",
    "apply_transform",
    "describe_merge",
    "describe_split",
    "describe_transform",
    "merge_parts",
    "part_shape",
    "split_part",
]

Shape = tuple[int, ...]
# One part of a split: (dim, start, length, groups) along the source tensor. With groups G
# the dim is G equal blocks and the part is start:start+length of each block, in order.
Part = tuple[int, int, int, int]


def _dim(dim: int, ndim: int, what: str) -> int:
    if not -ndim <= dim < ndim:
        raise InvalidRecipeError(f"dim {dim} is out of range for a {ndim}-D tensor ({what})")
    return dim % ndim


def describe_split(
    shape: Shape,
    dim: int,
    count: int,
    sizes: Sequence[int] | None,
    *,
    key: str,
    groups: int = 1,
) -> list[Part]:
    """The parts of a split of ``shape`` along ``dim`` into ``count`` (or ``sizes``) pieces,
    each block's when the dim holds ``groups`` equal blocks.

    Raises:
        InvalidRecipeError: the dim is out of range, does not divide into the groups or into
            equal parts, or the sizes do not add up to it (to a block of it).
    """
    d = _dim(dim, len(shape), key)
    length = shape[d]
    if groups > 1:
        if length % groups:
            raise InvalidRecipeError(
                f"{key} has {length} along dim {dim}, which does not split into {groups} groups"
            )
        length //= groups
    if sizes is None:
        if length % count:
            raise InvalidRecipeError(
                f"{key} has {length} along dim {dim}, which does not split into {count} equal "
                f"parts; give `sizes`"
            )
        sizes = [length // count] * count
    if sum(sizes) != length:
        per = f" per group ({groups} groups)" if groups > 1 else ""
        raise InvalidRecipeError(
            f"sizes {list(sizes)} add up to {sum(sizes)} but {key} has {length} along dim "
            f"{dim}{per}"
        )
    parts, start = [], 0
    for size in sizes:
        parts.append((d, start, size, groups))
        start += size
    return parts


def part_shape(shape: Shape, part: Part) -> Shape:
    """The shape of ``part`` of a tensor of ``shape``."""
    dim, _, length, groups = part
    return tuple(length * groups if d == dim else n for d, n in enumerate(shape))


def split_part(value: torch.Tensor, part: Part) -> torch.Tensor:
    """One part of a split, as a new contiguous tensor."""
    dim, start, length, groups = part
    if groups > 1:  # [.., G * B, ..] -> [.., G, B, ..]: the piece of every block
        blocks = value.unflatten(dim, (groups, value.shape[dim] // groups))
        value = blocks.narrow(dim + 1, start, length).flatten(dim, dim + 1)
        return value.clone(memory_format=torch.contiguous_format)
    return value.narrow(dim, start, length).clone(memory_format=torch.contiguous_format)


def describe_merge(shapes: Sequence[Shape], dim: int, *, keys: Sequence[str]) -> Shape:
    """The shape of ``shapes`` concatenated along ``dim``.

    Raises:
        InvalidRecipeError: ranks differ, the dim is out of range, or another dim differs.
    """
    first = shapes[0]
    d = _dim(dim, len(first), keys[0])
    for key, shape in zip(keys[1:], shapes[1:], strict=True):
        if len(shape) != len(first) or any(
            a != b for i, (a, b) in enumerate(zip(shape, first, strict=True)) if i != d
        ):
            raise InvalidRecipeError(
                f"cannot concatenate {keys[0]} {list(first)} and {key} {list(shape)} along "
                f"dim {dim}: every other dim must agree"
            )
    return tuple(sum(s[d] for s in shapes) if i == d else n for i, n in enumerate(first))


def merge_parts(parts: Sequence[torch.Tensor], dim: int) -> torch.Tensor:
    """The parts concatenated along ``dim`` (a new tensor)."""
    return torch.cat(list(parts), dim=dim)


def describe_transform(rule: TransformRule, shape: Shape, *, key: str) -> tuple[Shape, str]:
    """The shape after ``rule`` and the op's description for the report.

    Raises:
        InvalidRecipeError: the op does not fit the shape (names the key).
    """
    if isinstance(rule, TransposeTransform):
        if rule.dims is None:
            if len(shape) != 2:
                raise InvalidRecipeError(
                    f"{key} is {len(shape)}-D {list(shape)}; transpose without `dims` swaps "
                    "the two dims of a 2-D tensor: give dims: [a, b]"
                )
            a, b = 0, 1
        else:
            a = _dim(rule.dims[0], len(shape), key)
            b = _dim(rule.dims[1], len(shape), key)
        out = list(shape)
        out[a], out[b] = out[b], out[a]
        return tuple(out), f"transpose({a},{b})"
    if isinstance(rule, SliceTransform):
        d = _dim(rule.dim, len(shape), key)
        indices = range(shape[d])[slice(rule.start, rule.stop, rule.step)]
        if not len(indices):
            raise InvalidRecipeError(
                f"slice {rule.start}:{rule.stop}:{rule.step} of {key}'s dim {d} "
                f"(size {shape[d]}) keeps nothing"
            )
        bounds = f"{indices.start}:{indices.stop}" + (f":{rule.step}" if rule.step != 1 else "")
        return tuple(len(indices) if i == d else n for i, n in enumerate(shape)), (
            f"slice(dim={d}, {bounds})"
        )
    if isinstance(rule, ReshapeTransform):
        return _reshaped(shape, rule.shape, key)
    if isinstance(rule, PermuteRotaryTransform):
        if not shape or len(shape) > 2 or shape[0] % (2 * rule.heads):
            raise InvalidRecipeError(
                f"permute_rotary needs a 1-D or 2-D tensor whose dim 0 splits into {rule.heads} "
                f"heads of an even size; {key} is {list(shape)}"
            )
        return shape, f"permute_rotary(heads={rule.heads}, to={rule.to})"
    raise InvalidRecipeError(f"unknown transform op {rule!r}")


def _permute_rotary(value: torch.Tensor, heads: int, to: str) -> torch.Tensor:
    """Meta's interleaved rotary pairs <-> transformers' halves, per head, along dim 0."""
    rest = tuple(value.shape[1:])
    half = value.shape[0] // heads // 2
    if to == "halves":  # [h, half, 2, ...] -> [h, 2, half, ...]
        return value.reshape(heads, half, 2, *rest).transpose(1, 2).reshape(value.shape)
    return value.reshape(heads, 2, half, *rest).transpose(1, 2).reshape(value.shape)


def _reshaped(shape: Shape, wanted: Sequence[int], key: str) -> tuple[Shape, str]:
    total = math.prod(shape)
    known = math.prod(n for n in wanted if n != -1)
    out = list(wanted)
    if -1 in out:
        if known == 0 or total % known:
            raise InvalidRecipeError(f"cannot reshape {key} {list(shape)} to {list(wanted)}")
        out[out.index(-1)] = total // known
    if math.prod(out) != total:
        raise InvalidRecipeError(
            f"cannot reshape {key} {list(shape)} ({total} elements) to {list(wanted)} "
            f"({math.prod(out)} elements)"
        )
    return tuple(out), f"reshape({list(shape)}->{out})"


def apply_transform(rule: TransformRule, value: torch.Tensor) -> torch.Tensor:
    """Apply one transform to a tensor; the values are kept exactly (a slice keeps a subset)."""
    shape, _ = describe_transform(rule, tuple(value.shape), key="tensor")
    if isinstance(rule, TransposeTransform):
        a, b = (0, 1) if rule.dims is None else rule.dims
        out = value.transpose(a, b)
    elif isinstance(rule, PermuteRotaryTransform):
        out = _permute_rotary(value, rule.heads, rule.to)
    elif isinstance(rule, SliceTransform):
        d = rule.dim % value.dim()
        index = range(value.shape[d])[slice(rule.start, rule.stop, rule.step)]
        out = value.index_select(d, torch.arange(index.start, index.stop, index.step))
    else:
        out = value.reshape(shape)
    return out.clone(memory_format=torch.contiguous_format)
