"""Scoring a source unit against a target unit: every piece of evidence, one probability.

Evidence combines as independent votes (a noisy-OR): the names (IDF-weighted, synonyms
mapped), the layer numbers (equal: for, different: strongly against), and order (the pair lies
on every order-preserving alignment of the two layouts, or the shape is unique on both sides).
Shapes gate: a unit pairs only with a unit whose tensors have the same canonical leaves and
shapes, or the same with its one 2-D weight transposed.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.engine.align.evidence import Unit

__all__ = [
    "P_ORDER",
    "P_ORDER_WEAK",
    "Evidence",
    "combine",
    "compatible",
    "numbers",
    "why",
]

# How much each piece of evidence alone makes a match believable.
P_ORDER = 0.92  # the layouts list their modules in the same order (nearly all of them)
P_ORDER_WEAK = 0.5  # the orders agree only in part
P_NAME = 0.95
P_NUMBERS = 0.5
P_NUMBERS_DEEP = 0.7  # several levels of numbering agree (stage, block, conv)
P_FAMILY = 0.6  # the enclosing modules are already matched to each other
P_LOCAL = 0.75  # and inside them, the only module of its kind left on each side
NUMBERS_DISAGREE = 0.3  # a different layer number keeps this share of the belief


@dataclass(frozen=True)
class Evidence:
    """What speaks for (and against) one source unit standing for one target unit."""

    name: float
    numbers: int  # 1 agree (up to the layout's usual renumbering), -1 disagree, 0 no comparison
    order: float  # belief from order alone: 0, or P_ORDER_WEAK / P_ORDER (see match.py)
    unique: bool
    transpose: bool
    depth: int = 0  # how many layer numbers were compared
    family: bool = False  # their enclosing modules were already matched to each other
    local: bool = False  # inside those modules, the n-th of its kind on both sides


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


def numbers(
    a: tuple[int, ...], b: tuple[int, ...], offset: tuple[int, ...] | None, first: int = 0
) -> int:
    """Layer numbers: 1 when ``b - a`` is the layout's usual shift (``layer1`` -> ``res2``),
    -1 when the depth is the same but the shift is not, 0 when they cannot be compared."""
    if not a or not b:
        return 0
    if len(a) != len(b):
        if min(len(a), len(b)) > 1:
            return 0
        # one side has a single number, the layer index: compare the leading numbers
        return 1 if b[0] - a[0] == first else -1
    diff = tuple(y - x for x, y in zip(a, b, strict=True))
    return 1 if diff == (offset or tuple(0 for _ in a)) else -1


def combine(e: Evidence) -> float:
    """One probability in [0, 1] from every piece of evidence."""
    doubt = 1.0
    doubt *= 1 - (P_ORDER if e.unique else e.order)
    doubt *= 1 - P_NAME * e.name
    if e.numbers > 0:
        doubt *= 1 - (P_NUMBERS_DEEP if e.depth > 1 else P_NUMBERS)
    if e.family:
        doubt *= 1 - P_FAMILY
    if e.local:
        doubt *= 1 - P_LOCAL
    belief = 1 - doubt
    # Numbering schemes differ between layouts (layer1 -> res2); where the order of the
    # whole layout already pins the pair, other numbers are no evidence against it.
    if e.numbers < 0 and not (e.order >= P_ORDER or e.unique):
        belief *= NUMBERS_DISAGREE
    return belief


def why(e: Evidence) -> str:
    """The evidence in words, for the report (``name 0.82 + layer + order + shape``)."""
    parts = [f"name {e.name:.2f}"]
    if e.numbers > 0:
        parts.append("layer")
    if e.numbers < 0:
        parts.append("layer differs")
    if e.family:
        parts.append("family" + (" + only one left" if e.local else ""))
    if e.unique:
        parts.append("unique shape")
    elif e.order:
        parts.append("order" if e.order >= P_ORDER else "order (partial)")
    parts.append("shape^T" if e.transpose else "shape")
    return " + ".join(parts)
