"""Tied weights stored once, as transformers' ``save_pretrained`` stores them.

A target architecture that ties parameters (one ``nn.Parameter`` under two keys) and declares
the duplicate in ``_tied_weights_keys`` (transformers' convention: the model re-ties it on
load) gets the duplicate dropped from the file. Only where the bytes are provably the same:
both keys fed by the same source key through the same ops (a recipe ``copy``, or a source that
stored the tie itself); otherwise both are written and nothing is lost.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn

    from app.engine.plan.build import Plan

__all__ = ["declared_ties", "store_ties_once"]


def declared_ties(model: nn.Module) -> dict[str, str]:
    """``{duplicate key: kept key}`` of the parameters ``model`` ties and declares as tied.

    The kept key is the first name ``named_parameters`` gives the shared parameter (the input
    embedding, registered first); a duplicate counts when a ``_tied_weights_keys`` entry of
    the module that owns it names it (transformers 4.x: names or patterns, relative to that
    module).
    """
    first: dict[int, str] = {}
    ties: dict[str, str] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(param), name)
        if kept != name and _declared(model, name):
            ties[name] = kept
    return ties


def store_ties_once(plan: Plan, ties: dict[str, str]) -> None:
    """Mark each declared duplicate whose bytes equal its kept key's as stored once.

    Args:
        plan: the plan; its entries get ``status="tied"`` and ``stored_as`` set.
        ties: from :func:`declared_ties`.
    """
    by_key = {e.target: e for e in plan.entries}
    for dup, kept in ties.items():
        d, k = by_key.get(dup), by_key.get(kept)
        if d is None or k is None or not (d.fed and k.fed):
            continue
        if (d.sources, d.ops, d.dtype, d.shape) == (k.sources, k.ops, k.dtype, k.shape):
            d.status, d.stored_as = "tied", kept


def _declared(model: nn.Module, key: str) -> bool:
    parts = key.split(".")
    for i in range(len(parts)):
        owner = model.get_submodule(".".join(parts[:i])) if i else model
        declared = getattr(owner, "_tied_weights_keys", None) or ()
        rest = ".".join(parts[i:])
        if any(rest == p or re.fullmatch(p, rest) for p in declared):
            return True
    return False
