"""Loading a recipe (object, mapping, JSON or YAML file) and explaining why one is invalid.

pydantic's errors become one message that cites the rule (``rename[2]``), names the field and
says what would be accepted.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from app.engine.errors import InvalidRecipeError
from app.engine.recipe.model import (
    ADAPT_MODELS,
    INIT_MODELS,
    RENAME_MODELS,
    Recipe,
    RecipeModel,
    SourceSpec,
)
from app.engine.recipe.patterns import cite
from app.engine.recipe.several import SliceRule
from app.engine.recipe.tensor_rules import TRANSFORM_MODELS, CopyRule, MergeRule, SplitRule

__all__ = ["MAX_RECIPE_FILE_BYTES", "RULE_LIST_SECTIONS", "load_recipe"]

MAX_RECIPE_FILE_BYTES = 1 << 20
_MAX_ERRORS_SHOWN = 10


class _StrictYamlLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key written twice in one mapping (a silently lost rule list)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                ident = (key_node.tag, key_node.value)
                if ident in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(ident)
        return super().construct_mapping(node, deep=deep)


def _json_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _read_recipe_file(path: Path) -> Any:
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".json"):
        raise InvalidRecipeError(
            f"recipe file {str(path)!r} must end in .yaml, .yml or .json to say how to read it"
        )
    try:
        size = path.stat().st_size
        if size > MAX_RECIPE_FILE_BYTES:
            raise InvalidRecipeError(
                f"recipe file {str(path)!r} is {size} bytes; at most {MAX_RECIPE_FILE_BYTES}"
            )
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise InvalidRecipeError(f"cannot read recipe file {str(path)!r}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise InvalidRecipeError(f"recipe file {str(path)!r} is not UTF-8 text") from None
    if suffix == ".json":
        try:
            return json.loads(text, object_pairs_hook=_json_pairs)
        except ValueError as exc:
            raise InvalidRecipeError(
                f"recipe file {str(path)!r} is not valid JSON: {exc}"
            ) from None
    try:
        return yaml.load(text, Loader=_StrictYamlLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        hint = ""
        if "escape character" in str(exc):  # "\d" inside double quotes, the usual regex slip
            hint = "; write regexes in single quotes ('^blocks\\.(\\d+)\\.'), where \\ is literal"
        raise InvalidRecipeError(
            f"recipe file {str(path)!r} is not valid YAML: {_one_line(str(exc))}{hint}"
        ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def load_recipe(obj: Recipe | Mapping[str, Any] | str | Path | None) -> Recipe:
    """Validate a recipe given as a mapping, a ``.yaml``/``.yml``/``.json`` file, or nothing.

    Args:
        obj: a mapping (parsed JSON/YAML), a path to a recipe file, ``None`` for the defaults,
            or an already validated `Recipe` (returned as is).

    Returns:
        The validated recipe. ``recipe.model_dump(mode="json")`` loads back to an equal one.

    Raises:
        InvalidRecipeError: the file cannot be read or parsed, or the recipe is invalid. The
            error's ``rule`` names the first offending rule (``rename[3]``, ``adapt[0]``,
            ``dtype``); its message lists every problem found.
    """
    if obj is None:
        return Recipe()
    if isinstance(obj, Recipe):
        return obj
    if isinstance(obj, str | Path) and str(obj).startswith("builtin:"):
        obj = _builtin(str(obj))
    data = _read_recipe_file(Path(obj)) if isinstance(obj, str | Path) else obj
    if data is None:  # an empty file
        return Recipe()
    if not isinstance(data, Mapping):
        raise InvalidRecipeError(
            f"a recipe is a mapping such as {{version: 1, rename: [...]}}, "
            f"got {type(data).__name__}"
        )
    try:
        return Recipe.model_validate(_without_extensions(data))
    except ValidationError as exc:
        raise _recipe_error(exc) from None


def _builtin(name: str) -> Path:
    from app.engine.align.builtins import builtin_path  # data files beside the aligner

    try:
        return builtin_path(name)
    except LookupError as exc:
        raise InvalidRecipeError(str(exc)) from None


def _without_extensions(data: Mapping[str, Any]) -> dict[str, Any]:
    """The recipe without ``x-`` fields (``x-confidence``, ``x-unresolved``: notes for people),
    at the top level and in each rule."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(key, str) and key.startswith("x-"):
            continue
        if key in _LIST_SECTIONS and isinstance(value, list):
            value = [
                {k: v for k, v in rule.items() if not (isinstance(k, str) and k.startswith("x-"))}
                if isinstance(rule, Mapping)
                else rule
                for rule in value
            ]
        out[key] = value
    return out


# ---------------------------------------------------------------------------------------------
# Turning pydantic's errors into one message that cites rules


RULE_LIST_SECTIONS = frozenset(
    {"rename", "drop", "only", "split", "merge", "copy", "transform", "adapt", "init", "freeze"}
)
"""The recipe's sections that are lists of rules (the aligner writes these, one rule a line)."""

_LIST_SECTIONS = RULE_LIST_SECTIONS | {"slices"}

# Tagged sections: (what the tag is called, tag -> model, an example rule).
_TAGGED: dict[str, tuple[str, dict[str, type[RecipeModel]], str]] = {
    "rename": ("kind", RENAME_MODELS, "{prefix: 'backbone.', to: 'encoder.'}"),
    "adapt": ("op", ADAPT_MODELS, "{match: 'conv1.weight', op: channels}"),
    "init": ("fn", INIT_MODELS, "{match: '*', fn: auto}"),
    "transform": ("op", TRANSFORM_MODELS, "{match: '*.c_attn.weight', op: transpose}"),
}

# Sections whose rules have one shape (no tag).
_UNTAGGED: dict[str, type[RecipeModel]] = {
    "split": SplitRule,
    "merge": MergeRule,
    "copy": CopyRule,
    "slices": SliceRule,
}


def _fields(model: type[RecipeModel]) -> list[str]:
    """A model's field names as a recipe writes them (``from``, ``copy``)."""
    return [info.alias or name for name, info in model.model_fields.items()]


_TYPE_NAMES = {
    "string_type": "a string",
    "int_type": "an integer",
    "float_type": "a number",
    "bool_type": "true or false",
    "list_type": "a list",
}


_BOUNDS = {  # error type -> (symbol, the ctx key holding the limit)
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


def _path(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _expected(raw: str) -> str:
    # pydantic writes "'a', 'b' or 'c'"; the recipe is YAML, so say "a, b, c".
    return raw.replace("'", "").replace(" or ", ", ")


def _unknown_field(name: str, fields: Sequence[str], owner: str) -> str:
    close = difflib.get_close_matches(name, fields, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"unknown field {name!r}; {hint}{owner} takes {', '.join(fields)}"


def _rename_kind_message(value: Any) -> str:
    if not isinstance(value, Mapping):
        return (
            f"a rename rule is a mapping such as {_TAGGED['rename'][2]}, "
            f"got {type(value).__name__} {value!r}"
        )
    kinds = [k for k in RENAME_MODELS if k in value]
    if not kinds:
        return (
            "a rename rule needs one of prefix, regex or key, e.g. "
            f"{_TAGGED['rename'][2]} (got fields: {', '.join(map(str, value)) or 'none'})"
        )
    return (
        f"a rename rule takes exactly one of prefix, regex, key, got {' and '.join(kinds)}; "
        "split it into one rule each (they apply in order)"
    )


def _describe(error: ErrorDetails) -> tuple[str | None, str]:
    """The citation and the message for one pydantic error."""
    loc = error["loc"]
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    section = loc[0] if loc and isinstance(loc[0], str) else None
    tag: str | None = None
    rest: tuple[str | int, ...] = ()

    if section in _LIST_SECTIONS and len(loc) >= 2 and isinstance(loc[1], int):
        rule: str | None = cite(section, loc[1])
        rest = tuple(loc[2:])
        if section in _TAGGED and rest:
            tag, rest = str(rest[0]), rest[1:]
    elif kind == "extra_forbidden":
        rule, rest = _path(loc[:-1]) or None, tuple(loc[-1:])
    else:
        rule = _path(loc) or None
    name = str(rest[-1]) if rest else None

    if kind == "extra_forbidden":
        field_name = str(loc[-1])
        if section in _TAGGED and tag is not None:
            word, models, _ = _TAGGED[section]
            owner = f"a {tag} rule" if section == "rename" else f"{word} {tag}"
            return rule, _unknown_field(field_name, _fields(models[tag]), owner)
        if rule == "source":
            return rule, _unknown_field(field_name, _fields(SourceSpec), "source")
        if section in _UNTAGGED and rule != section:
            return rule, _unknown_field(field_name, _fields(_UNTAGGED[section]), f"{section}")
        return rule, _unknown_field(field_name, _fields(Recipe), "a version 1 recipe")
    if kind == "missing":
        return rule, f"missing field {name!r}"
    if kind == "rename_kind":
        return rule, _rename_kind_message(value)
    if kind in ("union_tag_invalid", "union_tag_not_found") and section in _TAGGED:
        word, models, example = _TAGGED[section]
        choices = ", ".join(models)
        if kind == "union_tag_not_found":
            return rule, f"missing field {word!r} (expected {choices}), e.g. {example}"
        return rule, f"unknown {word} {ctx.get('tag')!r} (expected {choices})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        example = _TAGGED[section][2] if section in _TAGGED else "{key: value}"
        return rule, f"expected a mapping such as {example}, got {type(value).__name__} {value!r}"
    if kind == "literal_error":
        if rule == "version":
            return rule, f"unsupported recipe version {value!r}; this Graft reads version 1"
        subject = name or "value"
        where = f" for {_TAGGED[section][0]} {tag}" if section in _TAGGED and tag else ""
        expected = _expected(str(ctx.get("expected", "")))
        return rule, f"unknown {subject} {value!r}{where} (expected {expected})"
    if kind == "value_error":
        return rule, str(ctx.get("error", error["msg"]))
    if kind == "too_long":
        return rule, (
            f"has {ctx.get('actual_length')} entries; at most {ctx.get('max_length')} are allowed"
            " (merge rules with a regex)"
        )
    if kind == "string_too_long":
        return rule, (
            f"{name or 'pattern'} is {len(str(value))} characters long; "
            f"at most {ctx.get('max_length')} are allowed"
        )
    if kind == "string_too_short":
        return rule, f"{name or 'value'} must not be empty"
    if kind in _BOUNDS:
        symbol, limit = _BOUNDS[kind]
        return rule, f"{name or 'value'} should be {symbol} {ctx.get(limit)}, got {value!r}"
    if kind in _TYPE_NAMES:
        return rule, f"{name or 'value'} should be {_TYPE_NAMES[kind]}, got {value!r}"
    return rule, f"{name}: {error['msg']}" if name else error["msg"]


def _recipe_error(exc: ValidationError) -> InvalidRecipeError:
    described = [_describe(e) for e in exc.errors()]
    (rule, message), others = described[0], described[1:]
    shown = [f"{r}: {m}" if r else m for r, m in others[: _MAX_ERRORS_SHOWN - 1]]
    if len(others) > len(shown):
        shown.append(f"and {len(others) - len(shown)} more")
    return InvalidRecipeError("; ".join([message, *shown]), rule=rule)
