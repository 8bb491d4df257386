"""Alignment: recipes Graft writes itself (SPEC §2.2), and the built-in recipes.

Evidence per key (:mod:`.evidence`), one probability per pair (:mod:`.score`), an optimal
assignment with a margin test (:mod:`.assign`, :mod:`.match`), fused tensors (:mod:`.fused`),
and the recipe written compactly (:mod:`.compact`, :mod:`.render`). Nothing that ties is applied.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from app.engine.align.builtins import BUILTIN_PREFIX, Builtin, builtin_path, list_builtins

if TYPE_CHECKING:
    from app.engine.align.core import AlignResult, align, match_keys
    from app.engine.align.match import Candidate, Match
    from app.engine.align.render import align_document, render_json, render_yaml

# Loaded when first asked for: the matcher needs numpy, and the API process, which lists the
# built-in recipes, should not pay for it at start (issue 26: a faster warm restart).
_LAZY = {
    "AlignResult": "core", "align": "core", "match_keys": "core",
    "Candidate": "match", "Match": "match",
    "align_document": "render", "render_json": "render", "render_yaml": "render",
}  # fmt: skip

__all__ = [
    "BUILTIN_PREFIX",
    "AlignResult",
    "Builtin",
    "Candidate",
    "Match",
    "align",
    "align_document",
    "builtin_path",
    "list_builtins",
    "match_keys",
    "render_json",
    "render_yaml",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
