"""Matching leftover source keys to leftover target keys: units first, then fused tensors.

Rounds of: score every compatible unit pair (:mod:`app.engine.align.score`), solve the optimal
one-to-one assignment per connected group of candidates, and apply the pairs that reach the
threshold *and* beat every rival (same row or column) by a clear margin. Applied units leave
the pool, so the next round sees fewer rivals (a lone leftover of a shape is then unique).
What stays is tried as a fused tensor: one source split into k sibling targets, or k sibling
sources merged into one target. Nothing that ties is applied.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.engine.align.assign import forced_pairs, linear_sum_assignment
from app.engine.align.evidence import (
    Tensor,
    Unit,
    ancestors,
    common_mass,
    common_module,
    idf_weights,
    name_similarity,
)
from app.engine.align.score import (
    P_ORDER,
    P_ORDER_WEAK,
    Evidence,
    combine,
    compatible,
    numbers,
    why,
)

__all__ = ["Candidate", "Context", "Match", "close", "context", "match_units"]

# A rival is close when it is within this much of the best match, or when its doubt (1 - p)
# is less than DOUBT_RATIO times the best one's: the evidence does not tell them apart.
MARGIN = 0.05
DOUBT_RATIO = 3.0
TIE = 0.1  # a rival this close is reported as a tie (``ambiguous``)
_ROUNDS = 6
ORDER_COVERAGE = 0.97  # share of units order must pin for it to count fully
_DEPTH = 3  # how many enclosing modules take part in family evidence
_SHOWN = 3


def close(best: float, rival: float) -> bool:
    """Whether a rival comes close to the best match (then the best is not applied)."""
    return best - rival < MARGIN or (1 - rival) < DOUBT_RATIO * (1 - best)


@dataclass(frozen=True)
class Candidate:
    """A source key that could feed a target key, and how likely."""

    source: str
    confidence: float


@dataclass
class Match:
    """One target key and what would feed it.

    Attributes:
        target: the target key.
        sources: the source key(s) feeding it (several for a merge; empty when none fits).
        confidence: in [0, 1].
        why: the evidence in words.
        ops: ``transpose``, ``split(dim=D, i/k)`` or ``merge(dim=D)``.
        ambiguous: a rival is as likely: never applied.
        applied: reached the threshold with no rival close.
        candidates: the best sources for it, best first.
        group: for a split, every target of the source in order; for a merge, the sources.
        dim: the split/merge dim.
    """

    target: str
    sources: tuple[str, ...]
    confidence: float
    why: str
    ops: tuple[str, ...] = ()
    ambiguous: bool = False
    applied: bool = False
    candidates: list[Candidate] = field(default_factory=list)
    group: tuple[str, ...] = ()
    dim: int | None = None


def _signature(unit: Unit, transposed: bool) -> tuple[tuple[int, ...], ...] | None:
    shapes = [t.shape for k, t in unit.tensors.items() if k != "num_batches_tracked"]
    two_d = [i for i, s in enumerate(shapes) if len(s) == 2 and s[0] != s[1]]
    if transposed:
        if len(two_d) != 1:
            return None
        shapes[two_d[0]] = shapes[two_d[0]][::-1]
    return tuple(sorted(shapes))


@dataclass
class Context:
    """What the complete layouts say (computed once), and which modules are matched so far."""

    idf: Mapping[str, float]
    order: dict[tuple[int, int], float]  # (id(source unit), id(target unit)) -> belief
    offsets: dict[int, tuple[int, ...]]  # depth of the layer numbers -> the usual shift
    first: int = 0  # the usual shift of the leading number alone
    names: dict[tuple[int, int], float] = field(default_factory=dict)  # cache by unit ids
    masses: dict[int, float] = field(default_factory=dict)

    def name(self, source: Unit, target: Unit) -> float:
        """The names' similarity (cached: rounds ask again)."""
        key = (id(source), id(target))
        value = self.names.get(key)
        if value is None:
            total = self._mass(source) + self._mass(target)
            value = 0.0
            if total:
                value = 2 * common_mass(source.tokens, target.tokens, self.idf) / total
            self.names[key] = value
        return value

    def _mass(self, unit: Unit) -> float:
        value = self.masses.get(id(unit))
        if value is None:
            value = self.masses[id(unit)] = common_mass(unit.tokens, unit.tokens, self.idf)
        return value

    family: dict[str, list[str]] = field(default_factory=dict)  # module -> matched targets

    def learn(self, source_path: str, target_path: str) -> None:
        """Record an applied match under each enclosing module of its source."""
        up = ancestors(target_path, _DEPTH)
        for k, a in enumerate(ancestors(source_path, _DEPTH)):
            if k < len(up):  # as many levels up on the target side
                self.family.setdefault(a, []).append(up[k])

    def related(self, source: Unit, target: Unit) -> list[tuple[str, str]]:
        """``[(a, b)]`` when the nearest enclosing module ``a`` of ``source`` with matches has
        them all inside ``b`` (their deepest common module), and ``b`` encloses ``target``."""
        for a in ancestors(source.path, _DEPTH):
            matched = self.family.get(a, [])
            if not matched:
                continue
            b = common_module(matched)
            theirs = ancestors(target.path, 64)
            if b not in theirs and len(set(matched)) == 1:
                # every match so far went to one module: ``a`` may be that module's parent
                b = next(iter(ancestors(b, 1)), "")
            return [(a, b)] if b and b in theirs else []
        return []


def _ranks(units: Sequence[Unit], transposed: bool) -> dict[tuple[str, Any], list[int]]:
    """(enclosing module, signature) -> the units under it with that signature, in order."""
    out: dict[tuple[str, Any], list[int]] = {}
    for i, unit in enumerate(units):
        sig = _signature(unit, transposed)
        for a in ancestors(unit.path, _DEPTH):
            out.setdefault((a, sig), []).append(i)
    return out


def _local_order(
    pairs: list[tuple[str, str]], i: int, j: int, sig_s: Any, sig_t: Any,
    ranks_s: dict[tuple[str, Any], list[int]], ranks_t: dict[tuple[str, Any], list[int]],
) -> bool:  # fmt: skip
    """Whether, inside matched modules, ``i`` and ``j`` are the only ones of their kind."""
    for a, b in pairs:
        mine, theirs = ranks_s.get((a, sig_s), []), ranks_t.get((b, sig_t), [])
        # Only the one module of its kind left on both sides: an order inside a module is
        # not trusted (Detectron2 defines a block's shortcut first, torchvision last).
        if mine == [i] and theirs == [j]:
            return True
    return False


def _fits(sources: Sequence[Unit], targets: Sequence[Unit]) -> dict[tuple[int, int], bool]:
    """Compatible pairs (by shape and leaf), each with whether it needs a transpose."""
    buckets: dict[tuple[tuple[int, ...], ...], list[int]] = {}
    for j, unit in enumerate(targets):
        buckets.setdefault(_signature(unit, False) or (), []).append(j)
    fits: dict[tuple[int, int], bool] = {}
    seen: dict[tuple[Any, Any], bool | None] = {}  # compatibility depends on leaves and shapes
    layouts = [_layout(u) for u in targets]
    for i, unit in enumerate(sources):
        mine = _layout(unit)
        for transposed in (False, True):
            sig = _signature(unit, transposed)
            for j in buckets.get(sig, []) if sig is not None else []:
                key = (mine, layouts[j])
                if key not in seen:
                    seen[key] = compatible(unit, targets[j])
                if seen[key] is not None:
                    fits[(i, j)] = bool(seen[key])
    # A transpose is a fallback: a unit with a candidate as it is takes no transposed one
    # (``w2`` [d, 4d] is ``down_proj``, not ``up_proj`` [4d, d] turned over).
    as_is_s = {i for (i, _), t in fits.items() if not t}
    as_is_t = {j for (_, j), t in fits.items() if not t}
    return {
        (i, j): t for (i, j), t in fits.items() if not t or (i not in as_is_s and j not in as_is_t)
    }


def _layout(unit: Unit) -> tuple[tuple[str, tuple[int, ...], bool], ...]:
    return tuple((leaf, t.shape, t.kernel) for leaf, t in sorted(unit.tensors.items()))


def context(sources: Sequence[Unit], targets: Sequence[Unit]) -> Context:
    """The evidence the complete layouts give: token weights, order, renumbering."""
    idf = idf_weights([*sources, *targets])
    fits = _fits(sources, targets)
    eq = np.zeros((len(sources), len(targets)), dtype=bool)
    for i, j in fits:
        eq[i, j] = True
    forced = forced_pairs(eq)
    # Order is strong evidence only when the two layouts list (nearly) all modules alike.
    coverage = len(forced) / max(len(sources), len(targets), 1)
    strength = P_ORDER if coverage >= ORDER_COVERAGE else P_ORDER_WEAK
    order = {(id(sources[i]), id(targets[j])): strength for i, j in forced}
    ctx = Context(idf, {}, {})
    votes: dict[int, dict[tuple[int, ...], float]] = {}
    for i, j in fits:
        a, b = sources[i].numbers, targets[j].numbers
        if a and len(a) == len(b):
            diff = tuple(y - x for x, y in zip(a, b, strict=True))
            weight = ctx.name(sources[i], targets[j]) + 0.05
            depth = votes.setdefault(len(a), {})
            depth[diff] = depth.get(diff, 0.0) + weight
    offsets = {depth: max(c, key=c.__getitem__) for depth, c in votes.items()}
    # the leading number's shift: that of the depth with the most evidence
    busiest = max(votes, key=lambda d: sum(votes[d].values()), default=None)
    ctx.order, ctx.offsets = order, offsets
    ctx.first = offsets[busiest][0] if busiest is not None else 0
    return ctx


def _score_matrix(
    sources: Sequence[Unit], targets: Sequence[Unit], ctx: Context
) -> tuple[np.ndarray, dict[tuple[int, int], Evidence]]:
    fits = _fits(sources, targets)
    rows: Counter[int] = Counter(i for i, _ in fits)
    cols: Counter[int] = Counter(j for _, j in fits)
    score = np.full((len(sources), len(targets)), -np.inf)
    evidence: dict[tuple[int, int], Evidence] = {}
    ranks_s = {t: _ranks(sources, t) for t in (False, True)}
    ranks_t = _ranks(targets, False)
    for (i, j), t in fits.items():
        s, u = sources[i], targets[j]
        family = ctx.related(s, u)
        local = bool(family) and _local_order(
            family, i, j, _signature(s, t), _signature(u, False), ranks_s[t], ranks_t
        )
        e = Evidence(
            name=ctx.name(s, u),
            numbers=numbers(s.numbers, u.numbers, ctx.offsets.get(len(s.numbers)), ctx.first),
            order=ctx.order.get((id(s), id(u)), 0.0),
            unique=rows[i] == 1 and cols[j] == 1,
            transpose=t,
            depth=len(s.numbers),
            family=bool(family),
            local=local,
        )
        evidence[(i, j)] = e
        score[i, j] = combine(e)
    return score, evidence


def _components(score: np.ndarray) -> list[tuple[list[int], list[int]]]:
    """Groups of rows and columns linked by some allowed pair."""
    n, m = score.shape
    parent = list(range(n + m))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    rows, cols = np.nonzero(np.isfinite(score))
    for i, j in zip(rows.tolist(), cols.tolist(), strict=True):
        parent[find(i)] = find(n + j)
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for i in sorted(set(rows.tolist())):
        groups.setdefault(find(i), ([], []))[0].append(i)
    for j in sorted(set(cols.tolist())):
        groups.setdefault(find(n + j), ([], []))[1].append(j)
    return list(groups.values())


@dataclass
class _Pair:
    source: Unit
    target: Unit
    evidence: Evidence
    confidence: float
    rival: float
    rivals: list[tuple[float, Unit]]


def _round(sources: Sequence[Unit], targets: Sequence[Unit], ctx: Context) -> list[_Pair]:
    """One round: the optimal assignment, each pair with its best rival."""
    score, evidence = _score_matrix(sources, targets, ctx)
    out: list[_Pair] = []
    for rows, cols in _components(score):
        sub = score[np.ix_(rows, cols)]
        for r, c in linear_sum_assignment(sub):
            i, j = rows[r], cols[c]
            p = float(sub[r, c])
            others_row = np.delete(sub[r], c)
            others_col = np.delete(sub[:, c], r)
            finite = np.concatenate([others_row, others_col])
            finite = finite[np.isfinite(finite)]
            rival = float(finite.max()) if finite.size else 0.0
            order = np.argsort(-np.where(np.isfinite(sub[:, c]), sub[:, c], -1.0), kind="stable")[
                :_SHOWN
            ]
            rivals = [(float(sub[k, c]), sources[rows[k]]) for k in order
                      if np.isfinite(sub[k, c])]  # fmt: skip
            out.append(_Pair(sources[i], targets[j], evidence[(i, j)], p, rival, rivals))
    return out


def _key_matches(pair: _Pair, *, applied: bool, ambiguous: bool) -> list[Match]:
    out = []
    for leaf, tensor in pair.target.tensors.items():
        src = _counterpart(pair.source, leaf)
        if src is None:
            continue
        # canonical shapes hold a TF kernel as PyTorch would: it needs a transpose to get there
        flipped = len(tensor.shape) == 2 and src.shape != tensor.shape
        ops = ("transpose",) if flipped != src.kernel else ()
        candidates = []
        for score, unit in pair.rivals:
            other = _counterpart(unit, leaf)
            if other is not None:
                candidates.append(Candidate(other.key, round(score, 3)))
        out.append(
            Match(
                tensor.key, (src.key,), round(pair.confidence, 3), why(pair.evidence), ops,
                ambiguous=ambiguous, applied=applied, candidates=candidates,
            )
        )  # fmt: skip
    return out


def _counterpart(unit: Unit, leaf: str) -> Tensor | None:
    src = unit.tensors.get(leaf)
    if src is None and len(unit.tensors) == 1 and leaf != "num_batches_tracked":
        (src,) = unit.tensors.values()
    return src


def match_units(
    sources: Sequence[Unit], targets: Sequence[Unit], ctx: Context, *, min_confidence: float
) -> tuple[list[Match], dict[str, Match], list[Unit], list[Unit]]:
    """Match units in rounds.

    Returns:
        The applied key matches, the proposed ones (not applied, by target key), and the
        source and target units that no applied match took.
    """
    left_s, left_t = list(sources), list(targets)
    matches: list[Match] = []
    last: list[_Pair] = []
    for _ in range(_ROUNDS):
        last = _round(left_s, left_t, ctx)
        good = [
            p for p in last if p.confidence >= min_confidence and not close(p.confidence, p.rival)
        ]
        if not good:
            break
        for pair in good:
            matches += _key_matches(pair, applied=True, ambiguous=False)
            ctx.learn(pair.source.path, pair.target.path)
        taken_s = {id(p.source) for p in good}
        taken_t = {id(p.target) for p in good}
        left_s = [u for u in left_s if id(u) not in taken_s]
        left_t = [u for u in left_t if id(u) not in taken_t]
    else:
        last = _round(left_s, left_t, ctx)
    proposals: dict[str, Match] = {}
    for pair in last:
        ambiguous = pair.confidence - pair.rival < TIE
        for m in _key_matches(pair, applied=False, ambiguous=ambiguous):
            proposals[m.target] = m
    return matches, proposals, left_s, left_t


def name_score(a: Unit, b: Unit, idf: Mapping[str, float]) -> float:
    """The names' similarity alone (for fused tensors and candidates)."""
    return name_similarity(a.tokens, b.tokens, idf)
