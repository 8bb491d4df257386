"""Re-derive what was not copied (issue 21, item 4): every produced tensor, read back from the
output, against the source's bytes read afresh, by checks independent of the ops' own code.

A byte copy is compared with its source range elsewhere (:mod:`app.engine.verify`). Every other
fed tensor is rebuilt here with plain torch calls (a split is a ``narrow``, a merge a ``cat``, a
transform a ``transpose``/``reshape``/slice, a cast ``.to``) and then, where the recipe
adapted it, held to the op's invariant:

- ``resize``: the overlapping block equals the source's;
- ``channels``: the kept channels equal the source's; ``fill: repeat`` equals timm's
  ``adapt_input_conv`` (sum to one channel; else tile, crop, rescale by src/dst), to 1e-6;
- ``interpolate``: the prefix tokens equal the source's;
- ``kernel_resize`` has no closed form: its digest is what is checked.

Kept tensors equal the template's values; initialised ones are checked by digest only.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.meta import is_floating
from app.engine.plan import Plan, PlanEntry
from app.engine.readers import Source, open_source
from app.engine.target import Target

if TYPE_CHECKING:
    import torch

__all__ = ["Rederived", "rederive", "rederive_all"]


@dataclass
class Rederived:
    """What re-derivation checked: per method, how many tensors; and which ones failed.

    Attributes:
        how: method -> count (``cast``, ``transform``, ``split``, ``merge``, ``overlap``,
            ``recomputed``, ``prefix_tokens``, ``template``, ``digest_only``).
        unequal: ``"<key>: <what differs>"`` for each tensor that does not re-derive.
    """

    how: Counter[str] = field(default_factory=Counter)
    unequal: list[str] = field(default_factory=list)

    def section(self) -> dict[str, Any]:
        return {"checked": sum(self.how.values()), "how": dict(sorted(self.how.items())),
                "unequal": self.unequal}  # fmt: skip


def rederive_all(
    written: Path, plan: Plan, source: Source, target: Target, skip: set[str]
) -> Rederived:
    """Re-derive every planned tensor but those in ``skip`` (byte copies, compared already).

    Args:
        written: the output (file or folder).
        plan: its plan.
        source: the opened source.
        target: the target (a template's kept values).
        skip: target keys already compared byte for byte with the source.

    Returns:
        The counts per method, and the tensors that do not re-derive.
    """
    result = Rederived()
    with open_source(written, strip_prefixes="none") as out:
        for entry in plan.entries:
            if entry.target in skip or entry.target not in out.tensors:
                continue
            how, problem = rederive(entry, out.read(entry.target), source, target)
            result.how[how] += 1
            if problem is not None:
                result.unequal.append(f"{entry.target}: {problem}")
    return result


def _base(entry: PlanEntry, source: Source) -> tuple[torch.Tensor, str]:
    """The source's value after the split/merge and transforms, rebuilt independently."""
    import torch

    if entry.merge_dim is not None:
        value = torch.cat([source.read(s) for s in entry.sources], dim=entry.merge_dim)
        how = "merge"
    else:
        value = source.read(entry.sources[0])
        how = "cast"
        if entry.part is not None:
            dim, start, length, groups = entry.part
            block = value.shape[dim] // groups
            rows = [g * block + start + i for g in range(groups) for i in range(length)]
            value, how = value.index_select(dim, torch.tensor(rows, dtype=torch.long)), "split"
    for rule in entry.transforms:
        how = "transform" if how == "cast" else how
        if rule.op == "transpose":
            dims = rule.dims or [0, 1]
            value = value.transpose(dims[0], dims[1])
        elif rule.op == "reshape":
            value = value.reshape(rule.shape)
        elif rule.op == "permute_rotary":
            value = value.index_select(0, _rotary_rows(value.shape[0], rule.heads, rule.to))
        else:
            index = [slice(None)] * value.dim()
            index[rule.dim] = slice(rule.start, rule.stop, rule.step)
            value = value[tuple(index)]
    return value, how


def _rotary_rows(rows: int, heads: int, to: str) -> torch.Tensor:
    """Row ``r`` of the permuted tensor is row ``index[r]`` of the input, written out pair by
    pair (independently of the op's reshapes): interleaved ``(2i, 2i+1)`` <-> halves ``(i,
    half+i)`` within each head."""
    import torch

    per_head = rows // heads
    half = per_head // 2
    index = list(range(rows))
    for h in range(heads):
        base = h * per_head
        for i in range(half):
            interleaved, halves = (base + 2 * i, base + 2 * i + 1), (base + i, base + half + i)
            if to == "halves":
                index[halves[0]], index[halves[1]] = interleaved
            else:
                index[interleaved[0]], index[interleaved[1]] = halves
    return torch.tensor(index, dtype=torch.long)


def rederive(
    entry: PlanEntry, written: torch.Tensor, source: Source, target: Target
) -> tuple[str, str | None]:
    """How one tensor was checked, and what differs (``None``: it re-derives)."""

    if entry.status == "initialized" or (
        entry.adapt is not None and entry.adapt.op == "kernel_resize"
    ):
        return "digest_only", None
    if entry.status == "kept":
        expected = _as(target.read(entry.target), entry.dtype)
        return "template", None if _bits_equal(written, expected) else "differs from the template"
    base, how = _base(entry, source)
    if entry.adapt is None:
        ok = _bits_equal(written, _as(base, entry.dtype))
        return how, None if ok else "differs from the source after its declared ops"
    return _adapted(entry, written, base)


def _adapted(entry: PlanEntry, written: torch.Tensor, base: torch.Tensor) -> tuple[str, str | None]:
    import torch

    rule = entry.adapt
    if rule is None:
        return "overlap", "internal error: not adapted"
    if rule.op == "interpolate":
        prefix = rule.prefix_tokens
        n = prefix if isinstance(prefix, int) else min(prefix.source, prefix.target)
        ok = _bits_equal(written[:, :n], _as(base[:, :n], entry.dtype))
        return "prefix_tokens", None if ok else f"its {n} prefix tokens differ from the source's"
    if rule.op == "channels" and getattr(rule, "fill", None) == "repeat":
        src, dst = base.shape[1], written.shape[1]
        full = base.float()
        if dst == 1:
            expected = full.sum(dim=1, keepdim=True)
        else:
            tiles = [1, math.ceil(dst / src)] + [1] * (base.dim() - 2)
            expected = full.repeat(*tiles)[:, :dst] * (src / dst)
        ok = torch.allclose(written.float(), expected, rtol=1e-6, atol=1e-7, equal_nan=True)
        return "recomputed", None if ok else "differs from timm's adapt_input_conv of the source"
    overlap = tuple(slice(0, min(a, b)) for a, b in zip(base.shape, written.shape, strict=True))
    ok = _bits_equal(written[overlap], _as(base[overlap], entry.dtype))
    return "overlap", None if ok else "the block it shares with the source differs from it"


def _bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (NaNs included; float8 has no ``torch.equal``)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_bytes = [t.reshape(-1).contiguous().view(torch.uint8) for t in (a, b)]
    return bool(torch.equal(*as_bytes))


def _as(value: torch.Tensor, dtype: str) -> torch.Tensor:
    import torch

    if value.is_floating_point() and is_floating(dtype):
        return value.to(getattr(torch, dtype)).contiguous()
    return value.contiguous()
