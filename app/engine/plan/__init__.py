"""Planning, from headers alone: what feeds each target key, how, and which rules matched.

:mod:`app.engine.plan.feeds` forms the renamed keys and the split/merge/copy groups,
:mod:`app.engine.plan.build` matches them against the target (transforms, adaptation,
initialisation, alignment) and :mod:`app.engine.plan.rule_matches` counts every rule's
matches and applies ``unmatched``. No tensor data is read here.
"""

from app.engine.plan.build import LOW_COVERAGE, Plan, PlanEntry, Suggestion, Unused, build_plan

__all__ = ["LOW_COVERAGE", "Plan", "PlanEntry", "Suggestion", "Unused", "build_plan"]
