"""The target architecture's own adaptations in a plan, cited as the rule ``arch-default``.

A recipe ``adapt`` rule that matches a key always wins; where none does and the shapes differ,
the stem, position embedding and classifier the architecture declares get their usual
adaptation (:mod:`app.engine.adaptations`). The rules list shows ``arch-default`` once it
changed a key, with the keys it covers as ``matched``.
"""

from __future__ import annotations

from collections.abc import Sequence

from app.engine.adaptations import ARCH_DEFAULT, DefaultAdapt
from app.engine.plan.rule_matches import RuleMatch
from app.engine.target import Target

__all__ = ["ARCH_DEFAULT", "ArchDefaults"]


class ArchDefaults:
    """The target's declared parts by key (none for a template or a skeleton)."""

    def __init__(self, target: Target) -> None:
        self._declared = target.adaptations
        self._parts = self._declared.keys(target.tensors) if self._declared else {}

    def default(
        self, key: str, source: tuple[int, ...], target: tuple[int, ...]
    ) -> DefaultAdapt | None:
        """The declared adaptation of ``key`` between these shapes, if any fits."""
        part = self._parts.get(key)
        if part is None or self._declared is None:
            return None
        return self._declared.default(part, key, source, target)

    def reinit(self, key: str) -> bool:
        """Whether ``key`` is a classifier's, re-initialised when its shape differs."""
        return self._parts.get(key) == "classifier"

    def rule(self) -> RuleMatch:
        """The ``arch-default`` rule, before counting what it applied."""
        pattern = self._declared.pattern() if self._declared else ""
        return RuleMatch(ARCH_DEFAULT, len(self._parts), pattern, implicit=True)

    @staticmethod
    def listed(rules: Sequence[RuleMatch]) -> list[RuleMatch]:
        """``rules`` without ``arch-default`` unless it changed a key (reports stay as they
        were where the architecture's shapes agree)."""
        return [r for r in rules if r.rule != ARCH_DEFAULT or r.applied]
