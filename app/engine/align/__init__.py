"""Alignment: recipes Graft writes itself (SPEC §2.2), and the built-in recipes.

Evidence per key (:mod:`.evidence`), one probability per pair (:mod:`.score`), an optimal
assignment with a margin test (:mod:`.assign`, :mod:`.match`), fused tensors (:mod:`.fused`),
and the recipe written compactly (:mod:`.compact`, :mod:`.render`). Nothing that ties is applied.
"""

from app.engine.align.builtins import BUILTIN_PREFIX, Builtin, builtin_path, list_builtins
from app.engine.align.core import AlignResult, align, match_keys
from app.engine.align.match import Candidate, Match
from app.engine.align.render import align_document, render_json, render_yaml

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
