"""The reverse of an invertible recipe (SPEC §2.1): renames, ``split``, ``merge``, ``transpose``
and ``reshape``.

Renames are inverted in reverse order: a prefix or key rule swaps its two sides; a regex rule
is inverted when it is literal text and capture groups (``^blocks\\.(\\d+)\\.`` → ``layers.\\1.``
becomes ``^layers\\.(\\d+)\\.`` → ``blocks.\\1.``), each group used once in ``to``. A ``split``
becomes a ``merge`` and back, with the names' groups carried the same way. ``transpose`` is its
own inverse; ``reshape`` needs the shape it started from, which only the source's header
knows. A conversion always renames before it splits or merges and transforms last, so a recipe
that renames *and* splits, merges or transforms (or transforms what it splits) cannot be turned
around rule by rule; given the source, it is reversed key by key instead
(:mod:`app.engine.invert.by_key`). Every other rule is refused, by name.

Given the source, the renames are proved one-to-one on its keys: forward, then back, gives
every key again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.engine.errors import InvalidRecipeError
from app.engine.invert.by_key import invert_by_key
from app.engine.invert.rules import (
    invert_rename,
    invert_transform,
    merge_to_split,
    prove_renames,
    recipe_settings,
    split_to_merge,
)
from app.engine.invert.through import invert_through_renames
from app.engine.meta import TensorInfo
from app.engine.recipe.model import DEFAULT_INIT, Recipe
from app.engine.recipe.patterns import (
    cite,
)
from app.engine.recipe.tensor_rules import (
    PermuteRotaryTransform,
    ReshapeTransform,
    TransposeTransform,
)

__all__ = ["Inversion", "invert_recipe"]


@dataclass
class Inversion:
    """The reverse recipe, and what was proved or assumed on the way.

    Attributes:
        recipe: the reverse recipe as a document (``load_recipe`` accepts it).
        notes: one line each: what was proved on the source, what was assumed.
    """

    recipe: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def invert_recipe(recipe: Recipe, *, source: dict[str, TensorInfo] | None = None) -> Inversion:
    """The reverse of ``recipe``.

    Args:
        recipe: a validated recipe made only of renames, split, merge, transpose and reshape.
        source: the source's tensors (after prefix stripping), to prove the renames one-to-one
            and to learn the shapes ``reshape`` and unequal merges started from.

    Returns:
        The reverse recipe and notes.

    Raises:
        InvalidRecipeError: a rule that cannot be inverted, named.
    """
    _refuse_the_rest(recipe)
    renaming = bool(recipe.rename)
    others = [*_cites("split", recipe.split), *_cites("merge", recipe.merge)]
    others += _cites("transform", recipe.transform)
    mixed = recipe.transform and (recipe.split or recipe.merge)
    if (renaming and others) or mixed:
        if source is not None:  # every key's fate is known: reverse it key by key
            by_key, note = invert_by_key(recipe, source)
            return Inversion({**by_key, **recipe_settings(recipe)}, [note])
        if renaming:  # the other rules, written through the inverted renames
            return Inversion(*invert_through_renames(recipe))
        raise InvalidRecipeError(
            "cannot be inverted rule by rule: a conversion renames first and transforms last, "
            "so the reverse would have to run them the other way round; give --source to "
            "write the reverse key by key",
            rule=others[0] if renaming else cite("transform", 0),
        )
    notes: list[str] = []
    out: dict[str, Any] = {"version": 1}
    if renaming:
        out["rename"] = [
            invert_rename(rule, cite("rename", i))
            for i, rule in reversed(list(enumerate(recipe.rename)))
        ]
        if source is not None:
            notes.append(prove_renames(recipe.rename, out["rename"], list(source)))
    if recipe.merge:
        out["split"] = [merge_to_split(r, i, source, notes) for i, r in enumerate(recipe.merge)]
    if recipe.split:
        out["merge"] = [split_to_merge(r, i) for i, r in enumerate(recipe.split)]
    if recipe.transform:
        out["transform"] = [
            invert_transform(recipe.transform, i, source)
            for i in reversed(range(len(recipe.transform)))
        ]
    return Inversion({**out, **recipe_settings(recipe)}, notes)


def _cites(section: str, rules: Sequence[Any]) -> list[str]:
    return [cite(section, i) for i in range(len(rules))]


def _refuse_the_rest(recipe: Recipe) -> None:
    """Every rule outside renames, split, merge, transpose and reshape is refused by name."""
    for section in ("drop", "only", "copy_", "adapt", "freeze"):
        rules = getattr(recipe, section)
        if rules:
            name = section.rstrip("_")
            raise InvalidRecipeError(
                f"{name} rules cannot be inverted (they lose or duplicate tensors)",
                rule=cite(name, 0),
            )
    for i, rule in enumerate(recipe.transform):
        if not isinstance(rule, TransposeTransform | ReshapeTransform | PermuteRotaryTransform):
            raise InvalidRecipeError(
                f"a {rule.op} transform cannot be inverted (it keeps a subset)",
                rule=cite("transform", i),
            )
    if list(recipe.init) != [DEFAULT_INIT]:
        raise InvalidRecipeError("init rules cannot be inverted", rule=cite("init", 0))
    if recipe.dtype != "keep":
        raise InvalidRecipeError("a dtype cast cannot be inverted bit-exactly", rule="dtype")


# --- regexes and templates ----------------------------------------------------------------
