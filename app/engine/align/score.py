"""Scoring a source unit against a target unit: every piece of evidence, one probability.

Evidence combines as independent votes (a noisy-OR): the names (IDF-weighted, synonyms
mapped), the layer numbers (equal: for, different: strongly against), and order (the pair lies
on every order-preserving alignment of the two layouts, or the shape is unique on both sides).
Shapes gate: a unit pairs only with a unit whose tensors have the same canonical leaves and
shapes, or the same with its one 2-D weight transposed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from app.engine.align.evidence import Unit, name_similarity

__all__ = ["Evidence", "combine", "compatible", "gather", "why"]

# How much each piece of evidence alone makes a match believable.
P_ORDER = 0.92
P_NAME = 0.95
P_NUMBERS = 0.5
NUMBERS_DISAGREE = 0.3  # a different layer number keeps this share of the belief


@dataclass(frozen=True)
class Evidence:
    """What speaks for (and against) one source unit standing for one target unit."""

    name: float
    numbers: int  # 1 equal, -1 same depth but different, 0 nothing to compare
    order: bool
    unique: bool
    transpose: bool


def compatible(source: Unit, target: Unit) -> bool | None:
    """Whether the tensors fit one-to-one: ``False`` as they are, ``True`` with a transpose,
    ``None`` not at all. Leaves must agree (a bare parameter fits a one-tensor unit)."""
    s = {k: t for k, t in source.tensors.items() if k != "num_batches_tracked"}
    t = {k: x for k, x in target.tensors.items() if k != "num_batches_tracked"}
    if len(s) != len(t) or not s:
        return None
    if len(s) == 1:
        (a,), (b,) = s.values(), t.values()
        if a.leaf and b.leaf and a.leaf != b.leaf:
            return None
        pairs = [(a.shape, b.shape)]
    else:
        if set(s) != set(t):
            return None
        pairs = [(s[k].shape, t[k].shape) for k in s]
    if all(x == y for x, y in pairs):
        return False
    swapped = [(x, y) for x, y in pairs if x != y]
    if len(swapped) == 1 and len(swapped[0][0]) == 2 and swapped[0][0][::-1] == swapped[0][1]:
        return True
    return None


def _numbers(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    if not a or not b or len(a) != len(b):
        return 0
    return 1 if a == b else -1


def gather(
    source: Unit, target: Unit, idf: Mapping[str, float], *, order: bool, unique: bool, t: bool
) -> Evidence:
    """The evidence for one compatible pair."""
    name = name_similarity(source.tokens, target.tokens, idf)
    return Evidence(name, _numbers(source.numbers, target.numbers), order, unique, t)


def combine(e: Evidence) -> float:
    """One probability in [0, 1] from every piece of evidence."""
    doubt = 1.0
    if e.order or e.unique:
        doubt *= 1 - P_ORDER
    doubt *= 1 - P_NAME * e.name * e.name
    if e.numbers > 0:
        doubt *= 1 - P_NUMBERS
    belief = 1 - doubt
    if e.numbers < 0:
        belief *= NUMBERS_DISAGREE
    return belief


def why(e: Evidence) -> str:
    """The evidence in words, for the report (``name 0.82 + layer + order + shape``)."""
    parts = [f"name {e.name:.2f}"]
    if e.numbers > 0:
        parts.append("layer")
    if e.numbers < 0:
        parts.append("layer differs")
    if e.unique:
        parts.append("unique shape")
    elif e.order:
        parts.append("order")
    parts.append("shape^T" if e.transpose else "shape")
    return " + ".join(parts)
