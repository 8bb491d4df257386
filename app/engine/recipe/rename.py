"""Apply a recipe's rename rules and key filters to the source keys.

Rules apply in order, each to the output of the ones before. A rule *fires* on a key when it
changes it; the report cites the rules that fired (``rename[0]``, ``rename[2]``).

* prefix rule: a key starting with ``prefix`` has it replaced by ``to``.
* regex rule: **every** non-overlapping RE2 match in the key is replaced by ``to`` (like
  ``re.sub`` with no count); anchor the regex (``^``) to rewrite the start only.
* key rule: the key equal to ``key`` becomes ``to``.

Renaming is checked against the real key list, one rule at a time, so a rule that maps two
source keys onto one key, or a key onto the empty string, is refused by name.
Everything here is pure and deterministic, and preserves the input order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.errors import InvalidRecipeError
from app.engine.recipe import (
    KeyRule,
    PrefixRule,
    RegexRule,
    RenameRule,
    Replacement,
    cite,
    compile_patterns,
    compile_regex,
    parse_replacement,
)

__all__ = [
    "RenameOutcome",
    "Renamed",
    "apply_renames",
    "count_matches",
    "filter_keys",
    "rename_keys",
]


@dataclass(frozen=True, slots=True)
class Renamed:
    """Where one source key ends up.

    Attributes:
        source: the source key as read (after prefix stripping).
        key: the key after every rename rule.
        rules: citations of the rules that changed it, in the order they fired.
    """

    source: str
    key: str
    rules: tuple[str, ...] = ()


def _expand(replacement: Replacement, match: Any) -> str:
    return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in replacement)


def _rewriter(rule: RenameRule, citation: str) -> Callable[[str], tuple[str, bool]]:
    """A function mapping a key to its new key under ``rule`` (the same key when it misses),
    and whether the rule's pattern selected the key (even when ``to`` leaves it as it was)."""
    if isinstance(rule, PrefixRule):
        prefix, to = rule.prefix, rule.to
        return lambda key: (
            (to + key[len(prefix) :], True) if key.startswith(prefix) else (key, False)
        )
    if isinstance(rule, KeyRule):
        source, target = rule.key, rule.to
        return lambda key: (target, True) if key == source else (key, False)
    if isinstance(rule, RegexRule):
        regex = compile_regex(rule.regex, rule=citation)
        replacement = parse_replacement(rule.to, regex, rule=citation)

        def rewrite(key: str) -> tuple[str, bool]:
            new, count = regex.subn(lambda m: _expand(replacement, m), key)
            return new, count > 0

        return rewrite
    raise InvalidRecipeError(f"unknown rename rule {rule!r}", rule=citation)


@dataclass(frozen=True)
class RenameOutcome:
    """Where every source key ends up, and how many keys each rule selected.

    Attributes:
        renamed: for each source key, in input order, where it ends up.
        matched: for each rule, in order, the keys its pattern selected when it ran.
    """

    renamed: dict[str, Renamed]
    matched: list[int]


def apply_renames(keys: Sequence[str], rules: Sequence[RenameRule]) -> dict[str, Renamed]:
    """Rename every source key through the ordered rules (see :func:`rename_keys`)."""
    return rename_keys(keys, rules).renamed


def rename_keys(keys: Sequence[str], rules: Sequence[RenameRule]) -> RenameOutcome:
    """Rename every source key through the ordered rules.

    Args:
        keys: the source keys that actually exist, in checkpoint order.
        rules: the recipe's ``rename`` list, whole (positions give the citations).

    Returns:
        For each source key, in input order, where it ends up and which rules fired; and for
        each rule the number of keys it selected.

    Raises:
        InvalidRecipeError: a rule turns a key into the empty string, or maps two source keys
            onto one key; ``rule`` names the rule that did it and the message both keys.
    """
    current: dict[str, str] = {k: k for k in keys}  # source key -> key so far
    owner: dict[str, str] = {k: k for k in keys}  # key so far -> source key
    fired: dict[str, list[str]] = {k: [] for k in keys}
    matched: list[int] = []
    for index, rule in enumerate(rules):
        citation = cite("rename", index)
        rewrite = _rewriter(rule, citation)
        changed: list[tuple[str, str, str]] = []
        selected = 0
        for source, key in current.items():
            new, hit = rewrite(key)
            selected += hit
            if new == key:
                continue
            if not new:
                raise InvalidRecipeError(
                    f"turns {source!r} into an empty key; give the rule a non-empty `to`, or "
                    "narrow it so that it leaves this key alone",
                    rule=citation,
                )
            changed.append((source, key, new))
        # Free every old key first: one rule may move a key onto a name another key leaves in
        # the same step (prefix a. -> a.a. maps a.x to a.a.x while a.a.x becomes a.a.a.x).
        for _, old, _ in changed:
            del owner[old]
        for source, _, new in changed:
            other = owner.get(new)
            if other is not None:
                moved = any(c[0] == other for c in changed)
                clash = (
                    f"renames both {other!r} and {source!r} to {new!r}"
                    if moved
                    else f"renames {source!r} to {new!r}, which source key {other!r} already "
                    "maps to"
                )
                raise InvalidRecipeError(
                    f"{clash}; two source keys cannot share a key: make the rule narrower "
                    "(anchor the regex, or use a key rule)",
                    rule=citation,
                )
            owner[new] = source
            current[source] = new
            fired[source].append(citation)
        matched.append(selected)
    renamed = {k: Renamed(k, current[k], tuple(fired[k])) for k in keys}
    return RenameOutcome(renamed, matched)


def count_matches(keys: Iterable[str], patterns: Sequence[str], *, section: str) -> list[int]:
    """How many of ``keys`` each pattern of a recipe list (``drop``, ``only``, ``freeze``,
    ``adapt``…) selects, each counted on its own: overlaps count for every pattern.

    Raises:
        InvalidRecipeError: a pattern does not compile (naming ``section[i]``).
    """
    matchers = compile_patterns(patterns, section=section)
    counts = [0] * len(matchers)
    for key in keys:
        for i, m in enumerate(matchers):
            counts[i] += m.matches(key)
    return counts


def filter_keys(
    keys: Iterable[str], *, drop: Sequence[str] = (), only: Sequence[str] = ()
) -> tuple[list[str], dict[str, str]]:
    """Split renamed source keys into those to load and those the recipe leaves out.

    ``drop`` applies first; then, when ``only`` is non-empty, a key none of its patterns
    matches is left out too.

    Args:
        keys: renamed source keys.
        drop: the recipe's ``drop`` patterns (globs or ``re:<RE2>``).
        only: the recipe's ``only`` patterns.

    Returns:
        The kept keys in input order, and for each left-out key what left it out: the first
        ``drop[i]`` that matched, or ``only`` when no ``only`` pattern did.

    Raises:
        InvalidRecipeError: a pattern does not compile.
    """
    drops = compile_patterns(drop, section="drop")
    onlys = compile_patterns(only, section="only")
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for key in keys:
        hit = next((m for m in drops if m.matches(key)), None)
        if hit is not None:
            dropped[key] = hit.rule or "drop"
        elif onlys and not any(m.matches(key) for m in onlys):
            dropped[key] = "only"
        else:
            kept.append(key)
    return kept, dropped
