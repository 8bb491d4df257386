"""Collapse repeated key structure for humans: ``layer1.{0..2}.conv{1,2}.{weight,bias}``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["KeyGroup", "group_keys", "group_tensors"]


@dataclass(frozen=True, slots=True)
class KeyGroup:
    """A set of keys that is exactly the product of per-position alternatives."""

    pattern: str
    keys: tuple[str, ...]


def _render(alternatives: tuple[str, ...]) -> str:
    if len(alternatives) == 1:
        return alternatives[0]
    if all(a.isdigit() for a in alternatives):
        return _numbers(alternatives, shortest_range=2)
    head = _common_prefix(alternatives)
    tail = _common_prefix(tuple(a[len(head) :][::-1] for a in alternatives))[::-1]
    middles = tuple(a[len(head) : len(a) - len(tail)] for a in alternatives)
    if all(m.isdigit() for m in middles):
        return f"{head}{_numbers(middles, shortest_range=3)}{tail}"  # conv{1,2}, lin{0..4}
    return f"{head}{{{','.join(middles)}}}{tail}"


def _numbers(texts: tuple[str, ...], *, shortest_range: int) -> str:
    numbers = sorted(int(t) for t in texts)
    if len(numbers) >= shortest_range and numbers == list(range(numbers[0], numbers[-1] + 1)):
        return f"{{{numbers[0]}..{numbers[-1]}}}"
    return "{" + ",".join(map(str, numbers)) + "}"


def _common_prefix(words: tuple[str, ...]) -> str:
    first, last = min(words), max(words)
    n = 0
    while n < min(len(first), len(last)) and first[n] == last[n]:
        n += 1
    return first[:n]


def group_keys(keys: Sequence[str]) -> list[KeyGroup]:
    """Group dotted keys into Cartesian-product patterns, in first-seen order.

    Two patterns merge when they differ at exactly one dotted position, so every group is
    exactly the product of its alternatives: nothing is implied that is not there.

    Args:
        keys: dotted tensor keys.

    Returns:
        Groups in the order their first key appears in ``keys``.
    """
    order = {k: i for i, k in enumerate(keys)}
    # A pattern: tuple of alternatives per position, each a tuple in first-seen order.
    patterns: dict[tuple[tuple[str, ...], ...], list[str]] = {
        tuple((part,) for part in key.split(".")): [key] for key in keys
    }
    changed = True
    while changed:
        changed = False
        max_len = max((len(p) for p in patterns), default=0)
        for position in range(max_len - 1, -1, -1):
            buckets: dict[tuple[object, ...], list[tuple[tuple[str, ...], ...]]] = {}
            for pattern in patterns:
                if len(pattern) <= position:
                    continue
                rest = (len(pattern), position, pattern[:position], pattern[position + 1 :])
                buckets.setdefault(rest, []).append(pattern)
            for members in buckets.values():
                if len(members) < 2:
                    continue
                alternatives: list[str] = []
                merged_keys: list[str] = []
                for pattern in members:
                    alternatives.extend(a for a in pattern[position] if a not in alternatives)
                    merged_keys.extend(patterns.pop(pattern))
                base = members[0]
                new = (*base[:position], tuple(alternatives), *base[position + 1 :])
                patterns[new] = merged_keys
                changed = True
    groups = [
        KeyGroup(".".join(_render(alts) for alts in pattern), tuple(sorted(ks, key=order.get)))  # type: ignore[arg-type]
        for pattern, ks in patterns.items()
    ]
    return sorted(groups, key=lambda g: order[g.keys[0]])


def group_tensors(tensors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Group an inspection's tensors within each (shape, dtype, kind), in checkpoint order, so
    every group states one shape: ``blocks.{0..5}.attn.{key,query,value}.weight  [384, 384]``.

    Args:
        tensors: ``{"key", "shape", "dtype", "kind"}`` rows (``graft.inspect/v1``'s tensors).

    Returns:
        ``{"pattern", "keys", "shape", "dtype", "kind"}`` rows, ordered by first key.
    """
    order = {t["key"]: i for i, t in enumerate(tensors)}
    buckets: dict[tuple[tuple[int, ...], str, str], list[str]] = {}
    for t in tensors:
        buckets.setdefault((tuple(t["shape"]), t["dtype"], t["kind"]), []).append(t["key"])
    rows = [
        {"pattern": g.pattern, "keys": list(g.keys), "shape": list(shape), "dtype": dtype,
         "kind": kind}
        for (shape, dtype, kind), keys in buckets.items()
        for g in group_keys(keys)
    ]  # fmt: skip
    return sorted(rows, key=lambda row: order[row["keys"][0]])
