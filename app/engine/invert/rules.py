"""Inverting one rule at a time: renames (regexes mirrored group by group), ``split`` <->
``merge``, and the invertible transforms; shared by :mod:`.by_rule`, :mod:`.by_key` and
:mod:`.through`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.engine.errors import InvalidRecipeError
from app.engine.meta import TensorInfo
from app.engine.ops.multi import describe_transform
from app.engine.recipe.load import load_recipe
from app.engine.recipe.model import KeyRule, PrefixRule, Recipe, RegexRule, RenameRule
from app.engine.recipe.patterns import (
    cite,
    compile_pattern,
    compile_re2,
    compile_regex,
    split_replacement,
)
from app.engine.recipe.rename import rename_keys
from app.engine.recipe.tensor_rules import (
    MergeRule,
    PermuteRotaryTransform,
    ReshapeTransform,
    SplitRule,
    TransformRule,
    TransposeTransform,
    compile_names,
)

__all__ = [
    "invert_rename",
    "invert_transform",
    "merge_to_split",
    "prove_renames",
    "recipe_settings",
    "regex_shape",
    "split_to_merge",
    "unpermute",
]

_META = set(".^$*+?{}[]|()")


def recipe_settings(recipe: Recipe) -> dict[str, Any]:
    """The policy settings the reverse keeps (those not at their defaults)."""
    out: dict[str, Any] = {}
    for name in ("strict", "unmatched", "allow_empty", "seed"):
        value = getattr(recipe, name)
        if value != Recipe.model_fields[name].default:
            out[name] = value
    return out


@dataclass(frozen=True)
class _Shape:
    """A regex made of literal text and capture groups: the part a template can mirror."""

    start: bool  # anchored with ^
    end: bool  # anchored with $
    pieces: tuple[str | int, ...]  # literal text, or a group number
    groups: dict[int, str]  # group number -> its pattern text


def regex_shape(regex: str, rule: str) -> _Shape:
    """Parse ``regex`` into literal text and top-level capture groups, or refuse."""
    start, end = regex.startswith("^"), regex.endswith("$") and not regex.endswith("\\$")
    body = regex[1 if start else 0 : len(regex) - 1 if end else len(regex)]
    pieces: list[str | int] = []
    groups: dict[int, str] = {}
    literal: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body) and not body[i + 1].isalnum():
            literal.append(body[i + 1])
            i += 2
        elif char == "(":
            close = _group_end(body, i, rule)
            inner = body[i + 1 : close]
            if inner.startswith("?"):
                raise InvalidRecipeError(
                    f"regex {regex!r}: only plain (capture) groups can be inverted", rule=rule
                )
            if compile_re2(inner).groups:
                raise InvalidRecipeError(
                    f"regex {regex!r}: nested groups cannot be inverted", rule=rule
                )
            if literal:
                pieces.append("".join(literal))
                literal = []
            number = len(groups) + 1
            groups[number] = inner
            pieces.append(number)
            i = close + 1
        elif char in _META or char == "\\":
            raise InvalidRecipeError(
                f"regex {regex!r} has {body[i : i + 2]!r} outside its groups; only literal "
                "text and (groups) can be inverted",
                rule=rule,
            )
        else:
            literal.append(char)
            i += 1
    if literal:
        pieces.append("".join(literal))
    return _Shape(start, end, tuple(pieces), groups)


def _group_end(text: str, start: int, rule: str) -> int:
    depth, i, in_class = 0, start, False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            in_class = char != "]"
        elif char == "[":
            in_class = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise InvalidRecipeError(f"unbalanced parenthesis in {text!r}", rule=rule)


def _escape(text: str) -> str:
    return "".join(f"\\{c}" if c in _META or c == "\\" else c for c in text)


def _template(pieces: Sequence[str | int], numbering: dict[int, int]) -> str:
    """A ``to`` template: literal text (backslashes doubled) and group references (``\\1``,
    or ``\\g<1>`` where a digit follows)."""
    out: list[str] = []
    for i, piece in enumerate(pieces):
        if isinstance(piece, str):
            out.append(piece.replace("\\", "\\\\"))
            continue
        following = pieces[i + 1] if i + 1 < len(pieces) else ""
        number = numbering[piece]
        plain = number < 10 and not (isinstance(following, str) and following[:1].isdigit())
        out.append(f"\\{number}" if plain else f"\\g<{number}>")
    return "".join(out)


def _mirror(
    shape: _Shape, template: str, others: Sequence[str], rule: str
) -> tuple[str, list[str]]:
    """Swap a regex and its templates: ``template`` becomes the regex (each of ``shape``'s groups
    used exactly once in it), the regex and ``others`` become templates of the new groups."""
    parsed = split_replacement(template, compile_re2(_rebuild(shape)))
    refs = [p for p in parsed if isinstance(p, int)]
    if sorted(refs) != sorted(shape.groups):
        raise InvalidRecipeError(
            f"{template!r} must use each group of the regex exactly once to be inverted",
            rule=rule,
        )
    numbering = {old: new for new, old in enumerate(refs, start=1)}
    regex = "".join(_escape(p) if isinstance(p, str) else f"({shape.groups[p]})" for p in parsed)
    regex = ("^" if shape.start else "") + regex + ("$" if shape.end else "")
    compile_regex(regex, rule=rule)
    mirrored = [_template(shape.pieces, numbering)]
    for other in others:
        pieces = split_replacement(other, compile_re2(_rebuild(shape)))
        mirrored.append(_template(pieces, numbering))
    return regex, mirrored


def _rebuild(shape: _Shape) -> str:
    return "".join(
        _escape(p) if isinstance(p, str) else f"({shape.groups[p]})" for p in shape.pieces
    )


# --- each kind of rule ---------------------------------------------------------------------


def invert_rename(rule: RenameRule, citation: str) -> dict[str, str]:
    if isinstance(rule, PrefixRule):
        return {"prefix": rule.to, "to": rule.prefix}
    if isinstance(rule, KeyRule):
        return {"key": rule.to, "to": rule.key}
    if isinstance(rule, RegexRule):
        shape = regex_shape(rule.regex, citation)
        regex, (to,) = _mirror(shape, rule.to, [], citation)
        return {"regex": regex, "to": to}
    raise InvalidRecipeError(f"unknown rename rule {rule!r}", rule=citation)


def prove_renames(
    forward: Sequence[RenameRule], inverse: list[dict[str, str]], keys: list[str]
) -> str:
    back_rules = load_recipe({"rename": inverse}).rename
    there = rename_keys(keys, forward).renamed
    renamed = [there[k].key for k in keys]
    back = rename_keys(renamed, back_rules).renamed
    wrong = [(k, back[r].key) for k, r in zip(keys, renamed, strict=True) if back[r].key != k]
    if wrong:
        key, got = wrong[0]
        raise InvalidRecipeError(
            f"the renames are not one-to-one on this source: {key!r} comes back as {got!r} "
            f"({len(wrong)} keys differ)",
            rule="rename",
        )
    return f"proved: the renames map the source's {len(keys)} keys one-to-one and back"


def split_to_merge(rule: SplitRule, index: int) -> dict[str, Any]:
    citation = cite("split", index)
    if rule.groups > 1:
        raise InvalidRecipeError(
            "a split with groups has no inverse yet (a merge that interleaves the groups)",
            rule=citation,
        )
    if not rule.from_.startswith("re:"):
        return {"from": list(rule.to), "to": rule.from_, "dim": rule.dim}
    shape = regex_shape(rule.from_[3:], citation)
    regex, templates = _mirror(shape, rule.to[0], rule.to[1:], citation)
    return {"from": [f"re:{regex}", *templates[1:]], "to": templates[0], "dim": rule.dim}


def merge_to_split(
    rule: MergeRule, index: int, source: dict[str, TensorInfo] | None, notes: list[str]
) -> dict[str, Any]:
    citation = cite("merge", index)
    if rule.from_[0].startswith("re:"):
        shape = regex_shape(rule.from_[0][3:], citation)
        regex, templates = _mirror(shape, rule.to, rule.from_[1:], citation)
        out: dict[str, Any] = {"from": f"re:{regex}", "to": [templates[0], *templates[1:]]}
    else:
        out = {"from": rule.to, "to": list(rule.from_)}
    out["dim"] = rule.dim
    sizes = _merge_sizes(rule, source, citation)
    if sizes is not None and len(set(sizes)) > 1:
        out["sizes"] = sizes
    elif sizes is None:
        notes.append(f"{citation}: the reverse split assumes equal parts (give --source to check)")
    return out


def _merge_sizes(
    rule: MergeRule, source: dict[str, TensorInfo] | None, citation: str
) -> list[int] | None:
    """The parts' sizes along the merge dim, the same in every group of the source."""
    if source is None:
        return None
    names = compile_names(rule.from_[0], list(rule.from_[1:]))
    found: set[tuple[int, ...]] = set()
    for key in source:
        if (match := names.match(key)) is None:
            continue
        keys = [key] + [names.expand(i, match) for i in range(len(rule.from_) - 1)]
        if all(k in source for k in keys):
            found.add(tuple(source[k].shape[rule.dim] for k in keys))
    if len(found) != 1:
        raise InvalidRecipeError(
            f"the merged parts have {len(found)} different size patterns in this source; the "
            "reverse split needs one",
            rule=citation,
        )
    return list(found.pop())


def invert_transform(
    rules: Sequence[TransformRule], index: int, source: dict[str, TensorInfo] | None
) -> dict[str, Any]:
    citation = cite("transform", index)
    rule = rules[index]
    if isinstance(rule, TransposeTransform):
        return rule.model_dump(mode="json", exclude_none=True)
    if isinstance(rule, PermuteRotaryTransform):
        return unpermute(rule, rule.match)
    if isinstance(rule, ReshapeTransform):
        if source is None:
            raise InvalidRecipeError(
                "a reshape is inverted to the shape it started from, which only the source "
                "knows: give --source",
                rule=citation,
            )
        shapes = {
            shape
            for key, info in source.items()
            if (shape := _shape_before(rules, index, key, info.shape)) is not None
        }
        if len(shapes) != 1:
            raise InvalidRecipeError(
                f"the keys it matches have {len(shapes)} different shapes in this source; the "
                "reverse reshape needs one",
                rule=citation,
            )
        return {"match": rule.match, "op": "reshape", "shape": list(shapes.pop())}
    raise InvalidRecipeError(f"a {rule.op} transform cannot be inverted", rule=citation)


def unpermute(rule: PermuteRotaryTransform, match: str) -> dict[str, Any]:
    """The permutation back to the other rotary layout."""
    back = "interleaved" if rule.to == "halves" else "halves"
    return {"match": match, "op": "permute_rotary", "heads": rule.heads, "to": back}


def _shape_before(
    rules: Sequence[TransformRule], index: int, key: str, shape: tuple[int, ...]
) -> tuple[int, ...] | None:
    """``key``'s shape just before ``rules[index]``, or ``None`` when that rule misses it."""
    for i, rule in enumerate(rules[: index + 1]):
        if not compile_pattern(rule.match).matches(key):
            continue
        if i == index:
            return shape
        shape, _ = describe_transform(rule, shape, key=key)
    return None
