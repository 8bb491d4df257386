"""Writing applied matches as a recipe a person would write: families become one regex.

Renames that differ only in their numbers (and in a leaf both sides share) collapse into one
anchored regex with back-references (``^features\\.(\\d+)\\.conv\\.1\\.(weight|bias)$`` ->
``blocks.\\1.bn1.\\2``). Every family is checked against the real key lists: a regex that would
also catch a key outside its family is narrowed to the numbers it saw, and failing that
written key by key. The whole rename list is then replayed over the source keys to prove that
each key lands where its match says; splits, merges and transposes follow the same path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from app.engine.align.match import Match
from app.engine.errors import InvalidRecipeError
from app.engine.recipe import Recipe, load_recipe
from app.engine.recipe.rename import rename_keys

__all__ = ["compact_rules"]

_SEP = re.compile(r"([./])")

Pair = tuple[str, str, float]  # source, target, confidence


def _pieces(key: str) -> list[str]:
    return _SEP.split(key)


def _family_key(s: str, t: str) -> tuple[tuple[str | None, ...], tuple[str | None, ...], bool]:
    sp, tp = _pieces(s), _pieces(t)
    leaf = sp[-1] == tp[-1] and not sp[-1].isdigit()
    sk = tuple(None if p.isdigit() or (leaf and i == len(sp) - 1) else p for i, p in enumerate(sp))
    tk = tuple(None if p.isdigit() or (leaf and i == len(tp) - 1) else p for i, p in enumerate(tp))
    return sk, tk, leaf


def _escape(text: str) -> str:
    return "".join("\\" + c if c in ".^$*+?()[]{}|\\" else c for c in text)


def _family_rule(pairs: Sequence[Pair], leaf: bool, alternatives: bool) -> tuple[str, str] | None:
    """The (regex, to) of one family, or ``None`` when back-references cannot express it.

    A numbered segment that varies becomes a group (``(\\d+)``, or the numbers seen when
    ``alternatives``); one that does not stays literal; the shared leaf is a group of leaves.
    """
    sp, tp = _pieces(pairs[0][0]), _pieces(pairs[0][1])
    slots = [i for i, p in enumerate(sp) if p.isdigit()] + ([len(sp) - 1] if leaf else [])
    columns = {i: [_pieces(s)[i] for s, _, _ in pairs] for i in slots}
    grouped = [i for i in slots if len(set(columns[i])) > 1]
    regex = []
    for i, piece in enumerate(sp):
        if i not in grouped:
            regex.append(_escape(piece))
        elif piece.isdigit() and not alternatives:
            regex.append(r"(\d+)")
        else:
            regex.append("(" + "|".join(sorted(set(columns[i]), key=_natural)) + ")")
    to = []
    t_slots = [i for i, p in enumerate(tp) if p.isdigit()] + ([len(tp) - 1] if leaf else [])
    for i, piece in enumerate(tp):
        wanted = [_pieces(t)[i] for _, t, _ in pairs]
        group = next((g for g, j in enumerate(grouped) if columns[j] == wanted), None)
        if i in t_slots and group is not None:
            to.append(f"\\{group + 1}")
        elif len(set(wanted)) == 1:
            to.append(piece.replace("\\", "\\\\"))
        else:
            return None
    return "^" + "".join(regex) + "$", "".join(to)


def _natural(text: str) -> tuple[int, str]:
    return (int(text), "") if text.isdigit() else (1 << 30, text)


def _renames(
    pairs: Sequence[Pair], universe: Sequence[str]
) -> list[tuple[dict[str, str], float, int]]:
    families: dict[Any, list[Pair]] = {}
    for pair in pairs:
        families.setdefault(_family_key(pair[0], pair[1]), []).append(pair)
    rules: list[tuple[dict[str, str], float, int]] = []
    for (_, _, leaf), members in families.items():
        confidence = min(c for _, _, c in members)
        leaf = leaf and len({_pieces(s)[-1] for s, _, _ in members}) > 1
        written = _written_family(members, leaf, universe) if len(members) > 1 else None
        if written is None:
            rules += [({"key": s, "to": t}, c, 1) for s, t, c in members]
        else:
            rules.append((written, confidence, len(members)))
    return rules


def _written_family(
    members: Sequence[Pair], leaf: bool, universe: Sequence[str]
) -> dict[str, str] | None:
    wanted = {s: t for s, t, _ in members}
    for alternatives in (False, True):
        rule = _family_rule(members, leaf, alternatives)
        if rule is None:
            return None
        regex, to = rule
        compiled = re.compile(regex)
        caught = {k for k in universe if compiled.fullmatch(k)}
        if caught != set(wanted):
            continue
        python_to = re.sub(r"\\(\d+)", r"\\g<\1>", to)
        if all(compiled.sub(python_to, s) == t for s, t in wanted.items()):
            return {"regex": regex, "to": to}
    return None


def _replays(rules: Sequence[dict[str, Any]], base: Recipe, universe: Sequence[str],
             wanted: dict[str, str]) -> bool:  # fmt: skip
    try:
        recipe = load_recipe({"rename": [*base.model_dump(mode="json")["rename"], *rules]})
        original = list(universe)  # universe already carries the user's renames
        outcome = rename_keys(original, recipe.rename[len(base.rename) :])
    except InvalidRecipeError:
        return False
    return all(outcome.renamed[s].key == t for s, t in wanted.items())


def _ordered_keys(pairs: Sequence[Pair]) -> list[Pair]:
    """Key rules ordered so that none renames a key onto one a later rule has yet to move."""
    pending, out = list(pairs), []
    while pending:
        sources = {s for s, _, _ in pending}
        ready = [p for p in pending if p[1] not in sources or p[1] == p[0]]
        if not ready:
            return []  # a cycle (a swap): no order works
        out += ready
        pending = [p for p in pending if p not in ready]
    return out


def _transform_rules(keys: Sequence[str], universe: Sequence[str]) -> list[tuple[str, int]]:
    families: dict[tuple[str | None, ...], list[str]] = {}
    for key in keys:
        families.setdefault(tuple(None if p.isdigit() else p for p in _pieces(key)), []).append(key)
    out = []
    for template, members in families.items():
        regex = "^" + "".join(r"\d+" if p is None else _escape(p) for p in template) + "$"
        compiled = re.compile(regex)
        if len(members) > 1 and {k for k in universe if compiled.fullmatch(k)} == set(members):
            out.append(("re:" + regex, len(members)))
        else:
            out += [(k, 1) for k in members]
    return out


def compact_rules(
    base: Recipe,
    matches: Sequence[Match],
    *,
    source_keys: Sequence[str],
    target_keys: Sequence[str],
) -> tuple[dict[str, Any], dict[str, tuple[float, int]], list[str]]:
    """The complete recipe: the user's, then the applied matches as compact rules.

    Args:
        base: the user's recipe.
        matches: the matches; only applied ones become rules.
        source_keys: every source key after the user's renames (to check regexes against).
        target_keys: every target key.

    Returns:
        The recipe document, each new rule's cite -> (lowest confidence, keys), and warnings.
    """
    doc: dict[str, Any] = base.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    doc = {"version": 1, **doc}
    confidences: dict[str, tuple[float, int]] = {}
    warnings: list[str] = []
    applied = [m for m in matches if m.applied]
    pairs = [(m.sources[0], m.target, m.confidence) for m in applied
             if len(m.sources) == 1 and not m.group and m.sources[0] != m.target]  # fmt: skip
    wanted = {s: t for s, t, _ in pairs}
    rules = _renames(pairs, source_keys)
    if not _replays([r for r, _, _ in rules], base, source_keys, wanted):
        ordered = _ordered_keys(pairs)
        rules = [({"key": s, "to": t}, c, 1) for s, t, c in ordered]
        if not ordered or not _replays([r for r, _, _ in rules], base, source_keys, wanted):
            warnings.append(
                "the renames form a cycle (keys swap names); they are listed one per key and "
                "need a temporary name: edit rename by hand"
            )
    renamed = dict(wanted)
    _append(doc, "rename", rules, confidences)
    _fused(doc, applied, renamed, confidences, [renamed.get(k, k) for k in source_keys])
    transposed = [m.target for m in applied if "transpose" in m.ops]
    lowest = {m.target: m.confidence for m in applied}
    transforms = [
        ({"match": pattern, "op": "transpose"}, _lowest(pattern, transposed, lowest), n)
        for pattern, n in _transform_rules(transposed, target_keys)
    ]
    _append(doc, "transform", transforms, confidences)
    doc["strict"] = True
    return doc, confidences, warnings


def _lowest(pattern: str, keys: Sequence[str], lowest: dict[str, float]) -> float:
    if not pattern.startswith("re:"):
        return lowest[pattern]
    compiled = re.compile(pattern[3:])
    return min(lowest[k] for k in keys if compiled.fullmatch(k))


def _split_rules(
    splits: dict[str, list[Match]], renamed: dict[str, str], universe: Sequence[str]
) -> list[tuple[dict[str, Any], float, int]]:
    """Splits, a family (same names but numbers and leaf) as one ``re:`` rule."""
    families: dict[Any, list[tuple[str, list[Match]]]] = {}
    for source, ms in splits.items():
        whole = renamed.get(source, source)
        key = tuple(_family_key(whole, m.target)[:2] for m in ms), ms[0].dim
        families.setdefault(key, []).append((whole, ms))
    out: list[tuple[dict[str, Any], float, int]] = []
    for members in families.values():
        confidence = min(m.confidence for _, ms in members for m in ms)
        rule = _split_family(members, universe) if len(members) > 1 else None
        if rule is not None:
            out.append((rule, confidence, sum(len(ms) for _, ms in members)))
            continue
        for whole, ms in members:
            rule = {"from": whole, "to": [m.target for m in ms], "dim": ms[0].dim}
            out.append((rule, min(m.confidence for m in ms), len(ms)))
    return out


def _split_family(
    members: Sequence[tuple[str, list[Match]]], universe: Sequence[str]
) -> dict[str, Any] | None:
    leaf = len({_pieces(w)[-1] for w, _ in members}) > 1
    written = []
    for i in range(len(members[0][1])):
        pairs = [(whole, ms[i].target, 1.0) for whole, ms in members]
        rule = _family_rule(pairs, leaf, False)
        if rule is None:
            return None
        written.append(rule)
    regex = written[0][0]
    if any(r != regex for r, _ in written):
        return None
    compiled = re.compile(regex)
    if {k for k in universe if compiled.fullmatch(k)} != {w for w, _ in members}:
        return None
    return {"from": "re:" + regex, "to": [to for _, to in written], "dim": members[0][1][0].dim}


def _fused(
    doc: dict[str, Any],
    applied: Sequence[Match],
    renamed: dict[str, str],
    confidences: dict[str, tuple[float, int]],
    universe: Sequence[str],
) -> None:
    splits: dict[str, list[Match]] = {}
    merges: list[Match] = []
    for m in applied:
        if m.group and len(m.sources) == 1:
            splits.setdefault(m.sources[0], []).append(m)
        elif m.group:
            merges.append(m)
    for ms in splits.values():  # the parts in the order the split cuts them, not file order
        ms.sort(key=lambda m: m.group.index(m.target))
    split_rules = _split_rules(splits, renamed, universe)
    merge_rules = [
        ({"from": [renamed.get(s, s) for s in m.sources], "to": m.target, "dim": m.dim},
         m.confidence, len(m.sources))
        for m in merges
    ]  # fmt: skip
    _append(doc, "split", split_rules, confidences)
    _append(doc, "merge", merge_rules, confidences)


def _append(
    doc: dict[str, Any],
    section: str,
    rules: Sequence[tuple[dict[str, Any], float, int]],
    confidences: dict[str, tuple[float, int]],
) -> None:
    if not rules:
        return
    existing = doc.setdefault(section, [])
    for rule, confidence, count in rules:
        confidences[f"{section}[{len(existing)}]"] = (confidence, count)
        existing.append(rule)
