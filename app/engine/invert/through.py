"""The reverse of a recipe that renames *and* splits, merges or transposes, without the source.

A conversion always renames first, so the reverse recipe's renames (the forward ones inverted,
last first) run on the reverse source's keys before its split, merge and transform rules see
them. Those rules are therefore written in the forward rules' inverse image: every name and
pattern of the plain inversion (split <-> merge, transpose) is passed through the inverted
renames. A pattern passes through with its groups intact: each group is replaced by a sample
value it matches, the sample key is renamed, and the samples are turned back into groups; two
different sample sets must give the same result, or the pattern is refused by name.

Transforms are assumed to touch no key a split or merge makes (a transform of a split part
would have to be undone before the reverse merge): a note says so, and ``--source`` proves it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from app.engine.errors import InvalidRecipeError
from app.engine.invert.rules import (
    invert_rename,
    invert_transform,
    merge_to_split,
    recipe_settings,
    regex_shape,
    split_to_merge,
)
from app.engine.recipe.model import Recipe, RenameRule
from app.engine.recipe.patterns import cite
from app.engine.recipe.rename import rename_keys

__all__ = ["invert_through_renames"]

# Sample values for a group: unlikely to occur in a key's literal text by accident.
_SAMPLES = ("90817", "71923", "zqx90817", "zqy71923")
_WILDCARDS = set("*?[")


def invert_through_renames(recipe: Recipe) -> tuple[dict[str, Any], list[str]]:
    """The reverse recipe, in Graft's own rule order, with no source needed.

    Raises:
        InvalidRecipeError: a pattern the renames do not carry through intact, a glob with
            wildcards in a transform, or anything the plain inversion refuses.
    """
    from app.engine.recipe.load import load_recipe

    inverse = [
        invert_rename(rule, cite("rename", i))
        for i, rule in reversed(list(enumerate(recipe.rename)))
    ]
    back = load_recipe({"rename": inverse}).rename
    notes: list[str] = []
    out: dict[str, Any] = {"version": 1, "rename": inverse}
    if recipe.merge:
        out["split"] = [
            _split_through(merge_to_split(r, i, None, notes), back, cite("merge", i))
            for i, r in enumerate(recipe.merge)
        ]
    if recipe.split:
        out["merge"] = [
            _merge_through(split_to_merge(r, i), back, cite("split", i))
            for i, r in enumerate(recipe.split)
        ]
    if recipe.transform:
        out["transform"] = []
        for i in reversed(range(len(recipe.transform))):
            rule = invert_transform(recipe.transform, i, None)
            rule["match"] = _match_through(rule["match"], back, cite("transform", i))
            out["transform"].append(rule)
        if recipe.split or recipe.merge:
            notes.append(
                "assumed: the transforms touch no key a split or merge makes (give --source "
                "to prove it)"
            )
    return {**out, **recipe_settings(recipe)}, notes


def _rename(key: str, rules: Sequence[RenameRule]) -> str:
    return rename_keys([key], rules).renamed[key].key


def _samples(pattern: str) -> list[str]:
    alternatives = pattern.split("|") if re.fullmatch(r"[\w|]+", pattern) else []
    return [s for s in (*_SAMPLES, *alternatives) if re.fullmatch(pattern, s)]


def _through(
    regex: str, templates: Sequence[str], rules: Sequence[RenameRule], citation: str
) -> tuple[str, list[str]]:
    """``regex`` (literal text and groups) and templates of its groups, renamed."""
    shape = regex_shape(regex, citation)
    choices = {g: _samples(p) for g, p in shape.groups.items()}
    sets = [
        {g: options[k % len(options)] for g, options in choices.items() if options}
        for k in range(2)
    ]
    results: list[tuple[str, list[str]]] = []
    for values in sets:
        if len(values) != len(shape.groups) or len(set(values.values())) != len(values):
            raise InvalidRecipeError(
                f"pattern {regex!r}: its groups cannot be carried through the renames "
                "(give --source to invert key by key)",
                rule=citation,
            )
        first = "".join(values[p] if isinstance(p, int) else p for p in shape.pieces)
        names = [_rename(first, rules)] + [_rename(_fill(t, values), rules) for t in templates]
        results.append(_abstract(names, values, shape.groups, shape.start, shape.end, citation))
    if results[0] != results[1]:
        raise InvalidRecipeError(
            f"pattern {regex!r}: the renames treat its groups' values differently",
            rule=citation,
        )
    return results[0]


def _fill(template: str, values: dict[int, str]) -> str:
    return re.sub(r"\\(\d)|\\g<(\d+)>", lambda m: values[int(m.group(1) or m.group(2))], template)


def _abstract(
    names: list[str], values: dict[int, str], groups: dict[int, str], start: bool, end: bool,
    citation: str,
) -> tuple[str, list[str]]:  # fmt: skip
    """Turn the samples in renamed keys back into a regex (the first) and templates."""
    first, *others = names
    found = sorted((first.index(v), g) for g, v in values.items() if first.count(v) == 1)
    if len(found) != len(values):
        raise InvalidRecipeError(
            f"the renames lose or repeat a group of {first!r}; give --source", rule=citation
        )
    numbering = {g: n for n, (_, g) in enumerate(found, start=1)}
    regex, cut = "", 0
    for position, g in found:
        regex += re.escape(first[cut:position]) + f"({groups[g]})"
        cut = position + len(values[g])
    regex = ("^" if start else "") + regex + re.escape(first[cut:]) + ("$" if end else "")
    templates = []
    for name in others:
        text = name.replace("\\", "\\\\")
        for g, v in values.items():
            if name.count(v) != 1:
                raise InvalidRecipeError(f"the renames lose a group of {name!r}", rule=citation)
            text = text.replace(v, f"\\g<{numbering[g]}>")
        templates.append(text)
    return regex, templates


def _split_through(
    rule: dict[str, Any], rules: Sequence[RenameRule], citation: str
) -> dict[str, Any]:
    if rule["from"].startswith("re:"):
        regex, names = _through(rule["from"][3:], rule["to"], rules, citation)
        return {**rule, "from": "re:" + regex, "to": names}
    return {
        **rule,
        "from": _rename(rule["from"], rules),
        "to": [_rename(t, rules) for t in rule["to"]],
    }


def _merge_through(
    rule: dict[str, Any], rules: Sequence[RenameRule], citation: str
) -> dict[str, Any]:
    first, *others = rule["from"]
    if first.startswith("re:"):
        regex, names = _through(first[3:], [*others, rule["to"]], rules, citation)
        return {**rule, "from": ["re:" + regex, *names[:-1]], "to": names[-1]}
    return {
        **rule,
        "from": [_rename(n, rules) for n in rule["from"]],
        "to": _rename(rule["to"], rules),
    }


def _match_through(match: str, rules: Sequence[RenameRule], citation: str) -> str:
    if match.startswith("re:"):
        regex = match[3:]
        if "(" not in regex:  # give each run of digits a group, so it can be carried
            regex = regex.replace(r"\d+", r"(\d+)")
        regex, _ = _through(regex, [], rules, citation)
        return "re:" + regex
    if _WILDCARDS & set(match):
        raise InvalidRecipeError(
            f"match {match!r}: a glob with wildcards cannot be carried through the renames; "
            "write it as re:<regex> with groups, or give --source",
            rule=citation,
        )
    return _rename(match, rules)
