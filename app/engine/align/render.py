"""An alignment's recipe as text: YAML with ``# confidence`` comments, or JSON with ``x-`` fields.

Both load back with :func:`app.engine.recipe.load_recipe`, which ignores ``x-`` fields, so the
file ``graft align`` writes is the file ``graft convert`` applies.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from app.engine.align.core import AlignResult
from app.engine.align.match import Match
from app.engine.recipe.load import RULE_LIST_SECTIONS

__all__ = ["align_document", "render_json", "render_yaml", "unresolved_document"]


def unresolved_document(matches: list[Match]) -> list[dict[str, Any]]:
    """The unresolved target keys with their best candidates (``x-unresolved``)."""
    return [
        {
            "target": m.target,
            "ambiguous": m.ambiguous,
            "confidence": m.confidence,
            "why": m.why,
            "candidates": [{"source": c.source, "confidence": c.confidence} for c in m.candidates],
        }
        for m in matches
    ]


def align_document(result: AlignResult) -> dict[str, Any]:
    """The alignment as data: ``{recipe, matches, unresolved, rules}`` (``graft align --json``,
    ``POST /v1/align``)."""
    matches = [
        {
            "target": m.target,
            "sources": list(m.sources),
            "confidence": m.confidence,
            "why": m.why,
            "ops": list(m.ops),
            "applied": m.applied,
            "ambiguous": m.ambiguous,
        }
        for m in result.matches
    ]
    return {
        "recipe": result.recipe,
        "matches": matches,
        "unresolved": unresolved_document(result.unresolved),
        "rules": {k: {"confidence": c, "keys": n} for k, (c, n) in result.confidences.items()},
    }


def _flow(value: Any) -> str:
    text: str = yaml.safe_dump(value, default_flow_style=True, width=1 << 30, sort_keys=False)
    return text.strip().removesuffix("...").strip()


def render_yaml(result: AlignResult, *, header: str = "") -> str:
    """The recipe as YAML, one rule a line, each aligned rule with its confidence."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append(f"# {result.fed} of {result.total} target keys fed; "
                 f"{len(result.unresolved)} unresolved (x-unresolved lists them)")  # fmt: skip
    for field, value in result.recipe.items():
        if field in RULE_LIST_SECTIONS and isinstance(value, list):
            lines.append(f"{field}:")
            for i, rule in enumerate(value):
                note = result.confidences.get(f"{field}[{i}]")
                keys = f"{note[1]} key" + ("s" if note[1] != 1 else "") if note else ""
                comment = f"  # confidence {note[0]:.3f} ({keys})" if note else ""
                lines.append(f"  - {_flow(rule)}{comment}")
        else:
            lines.append(f"{field}: {_flow(value)}")
    if result.unresolved:
        lines.append("x-unresolved:")
        for item in unresolved_document(result.unresolved):
            lines.append(f"  - {_flow(item)}")
    return "\n".join(lines) + "\n"


def render_json(result: AlignResult) -> str:
    """The recipe as JSON: ``x-confidence`` and ``x-keys`` on aligned rules, ``x-unresolved``."""
    doc: dict[str, Any] = {}
    for field, value in result.recipe.items():
        if field in RULE_LIST_SECTIONS and isinstance(value, list):
            rules = []
            for i, rule in enumerate(value):
                note = result.confidences.get(f"{field}[{i}]")
                extra = {"x-confidence": note[0], "x-keys": note[1]} if note else {}
                rules.append({**rule, **extra})
            doc[field] = rules
        else:
            doc[field] = value
    doc["x-unresolved"] = unresolved_document(result.unresolved)
    return json.dumps(doc, indent=2) + "\n"
