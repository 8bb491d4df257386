"""Hints: for each key a conversion left over, its best candidate and a rule to paste.

Every unused source key (``unexpected`` or ``mismatched``) and every unfed target key
(``initialized`` or ``missing``) is scored against the other side's leftovers by the aligner
(:func:`app.engine.align.match_keys`, the evidence of SPEC §2.2). A candidate that fits as it is
(no transpose, split or merge) becomes the key's hint: the other key, the confidence, and one
line the user can paste into the recipe, ``rename: [{key: A, to: B}]``. Keys with no such
candidate get no hint, and their report is unchanged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from app.engine.meta import TensorInfo

if TYPE_CHECKING:
    from app.engine.align import Match
    from app.engine.plan.build import Plan
    from app.engine.readers import Source
    from app.engine.target import Target

__all__ = ["Hint", "add_hints", "paste_rename"]

_PLAIN = re.compile(r"^[A-Za-z0-9_./-]+$")


@dataclass(frozen=True)
class Hint:
    """A leftover key's best candidate on the other side.

    Attributes:
        candidate: the other key (a target key for a source key, and the reverse).
        confidence: the aligner's, in [0, 1].
        paste: the rule that would make the pair, one line of recipe YAML.
    """

    candidate: str
    confidence: float
    paste: str


def paste_rename(source: str, target: str) -> str:
    """``rename: [{key: SOURCE, to: TARGET}]``, keys quoted only where YAML needs it."""

    def quote(key: str) -> str:
        return key if _PLAIN.match(key) else json.dumps(key)

    return f"rename: [{{key: {quote(source)}, to: {quote(target)}}}]"


def add_hints(
    plan: Plan, source: Source, target: Target, *, plain: Collection[str], min_confidence: float
) -> None:
    """Give each leftover key of ``plan`` its hint (entries' and unused keys' ``hint``).

    Args:
        plan: the plan, after alignment.
        source: the opened source (its keys' shapes and dtypes).
        target: the target.
        plain: the renamed source keys that feed by name alone (a key a split, merge or copy
            took gets no hint: one more rename is not what it needs).
        min_confidence: the recipe's ``align_min_confidence`` (what the aligner applies).
    """
    from app.engine.align import match_keys

    sources: dict[str, TensorInfo] = {}
    for u in plan.unused:
        name = u.renamed or u.source
        if u.reason != "dropped" and name in plain and name not in sources:
            info = source.tensors[u.source]
            sources[name] = TensorInfo(name, info.shape, info.dtype, info.kind)
    targets = {
        e.target: target.tensors[e.target] for e in plan.entries if not e.fed and not e.benign
    }
    if not sources or not targets:
        return
    pairs = _fitting_pairs(match_keys(sources, targets, min_confidence=min_confidence),
                           sources, targets)  # fmt: skip
    by_target: dict[str, Hint] = {}
    by_source: dict[str, Hint] = {}
    for (src, dst), confidence in sorted(pairs.items(), key=lambda p: -p[1]):
        paste = paste_rename(src, dst)
        by_target.setdefault(dst, Hint(src, confidence, paste))
        by_source.setdefault(src, Hint(dst, confidence, paste))
    for entry in plan.entries:
        if not entry.fed:
            entry.hint = by_target.get(entry.target)
    plan.unused = [
        replace(u, hint=by_source[name])
        if u.reason != "dropped" and (name := u.renamed or u.source) in by_source
        else u
        for u in plan.unused
    ]


def _fitting_pairs(
    matches: Sequence[Match], sources: Mapping[str, TensorInfo], targets: Mapping[str, TensorInfo]
) -> dict[tuple[str, str], float]:
    """(source, target) -> confidence, for the pairs a plain rename would make."""
    pairs: dict[tuple[str, str], float] = {}
    for m in matches:
        found = [(m.sources[0], m.confidence)] if len(m.sources) == 1 and not m.group else []
        found += [(c.source, c.confidence) for c in m.candidates]
        for src, confidence in found:
            fits = src in sources and sources[src].shape == targets[m.target].shape
            if fits and confidence > 0 and (src, m.target) not in pairs:
                pairs[(src, m.target)] = float(confidence)
    return pairs
