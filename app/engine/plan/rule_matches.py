"""Every recipe rule with the number of keys it matched, and the ``unmatched`` policy.

``matched`` counts the keys a rule's pattern selects on the side it names, whether or not the
rule then changed them (SPEC §2.1): renames, ``drop`` and ``only`` count renamed source keys
(each pattern on its own: overlaps count for every pattern), ``split``/``merge``/``copy`` the
groups they formed, ``transform``/``adapt``/``init``/``freeze`` target keys. A rule that
matched nothing is almost always a typo: with ``unmatched: error`` it refuses the conversion,
with ``warn`` it is a warning. The default ``init`` the user did not write is never unmatched.

``applied`` counts the keys a rule changed. Renames, ``drop``, ``only``, ``split``/``merge``/
``copy`` and ``freeze`` act on everything they match; ``transform`` acts only on keys the source
feeds, ``adapt`` only where the shapes differ, ``init`` only on keys nothing else fed. A rule of
those that matched but never acted is a warning (``unapplied``) that says why.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from app.engine.recipe import PrefixRule, Recipe, RegexRule, RenameRule, cite
from app.engine.recipe.model import DEFAULT_INIT
from app.engine.recipe.rename import count_matches
from app.engine.warning import Warning

if TYPE_CHECKING:
    from app.engine.target import Target

__all__ = ["RuleMatch", "count_applied", "count_rules", "judge_rules"]

# Sections whose rules act on every key (or group) they match.
_ACT_ON_MATCH = frozenset(
    {"lora", "slices", "rename", "drop", "only", "split", "merge", "copy", "freeze"}
)
# Why a rule of the other sections matched keys but changed none.
_NOT_APPLIED = {
    "adapt": "shapes already equal: did you forget `--target-kwargs`?",
    "transform": "the source fed none of the keys it matches",
    "init": "the source fed every key it matches",
}


@dataclass(frozen=True)
class RuleMatch:
    """One recipe rule and how many keys (or groups) it matched.

    Attributes:
        rule: its citation, ``rename[0]``.
        matched: keys its pattern selected (groups for split, merge, copy).
        pattern: what it matches on, as written (for people reading the report).
        implicit: a default the user did not write (never unmatched).
        applied: keys it changed (see :func:`count_applied`).
    """

    rule: str
    matched: int
    pattern: str
    implicit: bool = False
    applied: int = 0

    @property
    def section(self) -> str:
        """The recipe section the rule sits in: ``adapt`` for ``adapt[0]``."""
        return self.rule.partition("[")[0]


def count_applied(rules: Sequence[RuleMatch], fired: Iterable[Sequence[str]]) -> list[RuleMatch]:
    """``rules`` with ``applied``: what each changed.

    Args:
        rules: every rule with its ``matched``.
        fired: each target entry's rules, as planned (after ``align``).
    """
    counts = Counter(rule for entry in fired for rule in set(entry))
    return [
        replace(m, applied=m.matched if m.section in _ACT_ON_MATCH else counts[m.rule])
        for m in rules
    ]


def count_rules(
    recipe: Recipe,
    renames: Sequence[int],
    renamed_keys: Sequence[str],
    groups: Mapping[str, int],
    target: Target,
) -> list[RuleMatch]:
    """Every rule of ``recipe``, in the order the conversion applies them, with ``matched``.

    Args:
        recipe: the recipe.
        renames: each rename rule's count, as the renaming measured it.
        renamed_keys: every source key after renames (what drop/only see).
        groups: split/merge/copy citations -> groups formed.
        target: the target (its keys are what transform/adapt/init/freeze select).
    """
    out = [
        RuleMatch(cite("rename", i), n, _rename_pattern(rule))
        for i, (n, rule) in enumerate(zip(renames, recipe.rename, strict=True))
    ]
    for section, patterns in (("drop", recipe.drop), ("only", recipe.only)):
        counts = count_matches(renamed_keys, patterns, section=section)
        out += [RuleMatch(cite(section, i), n, patterns[i]) for i, n in enumerate(counts)]
    for section, firsts in (
        ("split", [r.from_ for r in recipe.split]),
        ("merge", [r.from_[0] for r in recipe.merge]),
        ("copy", [r.from_ for r in recipe.copy_]),
    ):
        out += [
            RuleMatch(cite(section, i), groups.get(cite(section, i), 0), first)
            for i, first in enumerate(firsts)
        ]
    keys = list(target.tensors)
    implicit_init = list(recipe.init) == [DEFAULT_INIT]
    for section, patterns in (
        ("transform", [r.match for r in recipe.transform]),
        ("adapt", [r.match for r in recipe.adapt]),
        ("init", [r.match for r in recipe.init]),
        ("freeze", list(recipe.freeze)),
    ):
        counts = count_matches(keys, patterns, section=section)
        implicit = section == "init" and implicit_init
        out += [RuleMatch(cite(section, i), n, patterns[i], implicit) for i, n in enumerate(counts)]
    return out


def _rename_pattern(rule: RenameRule) -> str:
    if isinstance(rule, PrefixRule):
        return f"prefix {rule.prefix!r}"
    if isinstance(rule, RegexRule):
        return f"regex {rule.regex}"
    return f"key {rule.key!r}"


def judge_rules(
    rules: Sequence[RuleMatch], recipe: Recipe, failures: list[str], warnings: list[Warning]
) -> None:
    """Apply ``unmatched``: a refusal (``error``) or a warning (``warn``) per rule that matched
    nothing, naming the rule; and a warning per rule that matched keys but changed none."""
    for match in rules:
        if match.implicit:
            continue
        if match.matched:
            if not match.applied and match.section in _NOT_APPLIED:
                warnings.append(
                    Warning(
                        kind="unapplied",
                        message=f"{match.rule} ({match.pattern}) matched {match.matched} keys "
                        f"but changed none: {_NOT_APPLIED[match.section]}",
                    )
                )
            continue
        warning = Warning(
            kind="unmatched",
            message=f"{match.rule} ({match.pattern}) matched no key; check it for a typo",
        )
        if recipe.unmatched == "error":
            failures.append(f"{warning} (unmatched: error; `unmatched: warn` lets it pass)")
        else:
            warnings.append(warning)
