"""Alignment end to end: leftover keys in, matches and a recipe out.

:func:`match_keys` matches key sets (what ``align: suggest|apply`` in a plan uses);
:func:`align` runs the user's recipe on the headers first, matches what it leaves over, and
writes the complete recipe (:mod:`app.engine.align.compact`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from app.engine.align.compact import compact_rules
from app.engine.align.evidence import Unit, build_units, name_similarity, path_evidence
from app.engine.align.fused import match_fused
from app.engine.align.match import Candidate, Context, Match, context, match_units
from app.engine.meta import TensorInfo
from app.engine.recipe import Recipe, load_recipe
from app.engine.recipe.rename import rename_keys

__all__ = ["AlignResult", "align", "match_keys"]

_SHOWN = 3
_PASSES = 3  # unit rounds, then fused tensors, again while fused matches free modules


def match_keys(
    sources: Mapping[str, TensorInfo],
    targets: Mapping[str, TensorInfo],
    *,
    min_confidence: float,
) -> list[Match]:
    """Match source keys to target keys.

    Args:
        sources: the source keys left unused, in file order.
        targets: the target keys left unfed, in the target's order.
        min_confidence: a match is applied only at or above this, with no rival close.

    Returns:
        One match per target key, in target order: applied, proposed (``applied`` false, maybe
        ``ambiguous``), or with no source (``sources`` empty) but its best candidates.
    """
    units_s, units_t = build_units(sources), build_units(targets)
    ctx = context(units_s, units_t)
    left_s, left_t = units_s, units_t
    applied: list[Match] = []
    proposals: dict[str, Match] = {}
    fused: list[Match] = []
    for _ in range(_PASSES):
        got, proposals, left_s, left_t = match_units(
            left_s, left_t, ctx, min_confidence=min_confidence
        )
        applied += got
        fused = match_fused(left_s, left_t, ctx.idf, min_confidence=min_confidence)
        _unapply_conflicts(fused)
        done = [m for m in fused if m.applied]
        if not done:
            break
        applied += done
        fused = [m for m in fused if not m.applied]
        left_s, left_t = _consume(left_s, left_t, done, ctx)
    _doubt_square(applied, sources)
    by_target: dict[str, Match] = {m.target: m for m in applied}
    for m in fused:
        current = by_target.get(m.target) or proposals.get(m.target)
        if m.target not in by_target and (current is None or m.applied or _better(m, current)):
            proposals[m.target] = m
    for key, m in proposals.items():
        by_target.setdefault(key, m)
    out = []
    for key, info in targets.items():
        match = by_target.get(key)
        if match is None and key.rsplit(".", 1)[-1] != "num_batches_tracked":
            match = Match(key, (), 0.0, "no source key has a fitting shape")
            match.candidates = _shape_candidates(info, sources)
        if match is not None:
            out.append(match)
    return out


def _consume(
    sources: list[Unit], targets: list[Unit], done: list[Match], ctx: Context
) -> tuple[list[Unit], list[Unit]]:
    """The units left once applied fused matches took their keys; their modules vote."""
    used_s = {s for m in done for s in m.sources}
    used_t = {m.target for m in done}
    owner_s = {t.key: u.path for u in sources for t in u.tensors.values()}
    owner_t = {t.key: u.path for u in targets for t in u.tensors.values()}
    for m in done:
        for s in m.sources:
            ctx.learn(owner_s[s], owner_t[m.target])
    return _without(sources, used_s), _without(targets, used_t)


def _without(units: list[Unit], used: set[str]) -> list[Unit]:
    out = []
    for unit in units:
        rest = {leaf: t for leaf, t in unit.tensors.items() if t.key not in used}
        if len(rest) == len(unit.tensors):
            out.append(unit)
        elif rest and set(rest) != {"num_batches_tracked"}:
            out.append(replace(unit, tensors=rest))
    return out


def _doubt_square(applied: list[Match], sources: Mapping[str, TensorInfo]) -> None:
    """A layout that stores some 2-D weights transposed (GPT-2's ``Conv1D``) may store the
    square ones transposed too, and no shape can tell: those are not applied."""
    inferred = any(
        "transpose" in m.ops and _leaf(m.sources[0]) != "kernel" for m in applied if m.sources
    )
    if not inferred:
        return
    for m in applied:
        if len(m.sources) != 1 or m.group or "transpose" in m.ops:
            continue
        shape = sources[m.sources[0]].shape
        if len(shape) == 2 and shape[0] == shape[1] and _leaf(m.sources[0]) != "kernel":
            m.applied = False
            m.confidence = min(m.confidence, 0.5)
            m.why += " + square: other 2-D weights here are transposed, this one may be too"


def _leaf(key: str) -> str:
    return key.replace("/", ".").rsplit(".", 1)[-1].lower()


def _better(a: Match, b: Match) -> bool:
    return a.confidence > b.confidence


def _unapply_conflicts(fused: list[Match]) -> None:
    """Two fused matches that claim one key: neither is applied (they are a tie)."""
    claims: Counter[str] = Counter()
    groups = {(m.sources, m.group) for m in fused if m.applied}
    for sources, group in groups:
        claims.update(set(sources) | set(group))
    for m in fused:
        if m.applied and any(claims[k] > 1 for k in (*m.sources, *m.group)):
            m.applied, m.ambiguous = False, True


def _shape_candidates(info: TensorInfo, sources: Mapping[str, TensorInfo]) -> list[Candidate]:
    tokens, _ = path_evidence(info.key)
    scored = []
    for key, s in sources.items():
        if s.shape == info.shape or (len(s.shape) == 2 and s.shape[::-1] == info.shape):
            other, _ = path_evidence(key)
            scored.append((name_similarity(tokens, other, {}), key))
    scored.sort(key=lambda x: -x[0])
    return [Candidate(k, round(0.5 * s, 3)) for s, k in scored[:_SHOWN]]


@dataclass
class AlignResult:
    """What ``graft align`` found and wrote.

    Attributes:
        recipe: the complete recipe document (the user's rules, then the aligned ones).
        matches: every target key the user's rules left unfed, with its match.
        confidences: for each rule written by alignment, its cite (``rename[3]``) -> the lowest
            confidence among the keys it carries, and how many keys that is.
        warnings: anything the written recipe could not say compactly.
        fed: target keys fed (by the user's rules or an applied match); total: all of them
            except benign counters.
    """

    recipe: dict[str, Any]
    matches: list[Match]
    confidences: dict[str, tuple[float, int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    fed: int = 0
    total: int = 0

    @property
    def unresolved(self) -> list[Match]:
        return [m for m in self.matches if not m.applied]

    @property
    def complete(self) -> bool:
        return not self.unresolved


def _header_source(tensors: Mapping[str, TensorInfo]) -> Any:
    from app.engine.readers.source import Located, Source

    entries = {k: Located(None, k) for k in tensors}  # type: ignore[arg-type]
    return Source([], "header", [], entries, dict(tensors))


def align(
    source: Mapping[str, TensorInfo],
    target: Mapping[str, TensorInfo],
    recipe: Recipe | Mapping[str, Any] | None = None,
    *,
    min_confidence: float | None = None,
) -> AlignResult:
    """Write the recipe that feeds ``target`` from ``source``, from headers alone.

    Args:
        source: the source checkpoint's tensors (key -> description), in file order.
        target: the target's tensors, in its order.
        recipe: the user's rules, applied first (alignment works on what they leave).
        min_confidence: overrides the recipe's ``align_min_confidence``.

    Returns:
        The result: the complete recipe, every match, and the unresolved target keys.

    Raises:
        InvalidRecipeError: the user's recipe cannot apply to these keys.
    """
    from app.engine.plan import build_plan
    from app.engine.target import Target

    base = load_recipe(recipe)
    threshold = base.align_min_confidence if min_confidence is None else min_confidence
    probe = base.model_copy(
        update={"align": "off", "strict": False, "unmatched": "warn", "allow_empty": True}
    )
    header = _header_source(source)
    plan = build_plan(header, Target("skeleton", dict(target), name="target"), probe, hints=False)
    left_sources: dict[str, TensorInfo] = {}
    for u in plan.unused:
        if u.reason in ("unexpected", "mismatched") and u.renamed and u.renamed not in left_sources:
            info = header.tensors[u.source]
            left_sources[u.renamed] = TensorInfo(u.renamed, info.shape, info.dtype, info.kind)
    left_targets = {e.target: target[e.target] for e in plan.entries if not e.fed}
    matches = match_keys(left_sources, left_targets, min_confidence=threshold)
    renaming = rename_keys(list(header.tensors), base.rename)
    renamed_universe = [r.key for r in renaming.renamed.values()]
    document, confidences, warnings = compact_rules(
        base, matches, source_keys=renamed_universe, target_keys=list(target)
    )
    benign = {e.target for e in plan.entries if e.benign and not e.fed}
    fed = {e.target for e in plan.entries if e.fed} | {m.target for m in matches if m.applied}
    counted = [k for k in target if k not in benign or k in fed]
    matches = [m for m in matches if m.target not in benign or m.applied]
    return AlignResult(
        document, matches, confidences, warnings, len(fed & set(counted)), len(counted)
    )
