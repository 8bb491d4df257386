"""The recipe, version 1: a declarative, validated description of one conversion (SPEC §2).

The models here are plain data; behaviour lives in small functions (`load_recipe`,
`compile_pattern`, `compile_regex`, `parse_replacement`) that other engine modules call.
Every rule is cited by its list and index (`rename[0]`, `drop[1]`, `adapt[0]`, `init[2]`,
`freeze[0]`), the name reports and errors use.

Key patterns (`drop`, `only`, `freeze`, `adapt[].match`, `init[].match`) are either

* a glob, matched against the *whole* key, fnmatch-style and case-sensitive: ``*`` matches any
  run of characters **including dots** (so ``layer1.*`` covers ``layer1.0.conv1.weight``;
  ``**`` means the same as ``*``), ``?`` one character, ``[abc]`` / ``[!abc]`` / ``[a-z]`` a
  character class; or
* ``re:<RE2>``, an RE2 regular expression that must match the whole key (full match, like the
  glob). Write ``re:.*norm.*`` to find a substring.

Globs are translated to RE2 too: user input never reaches Python's backtracking ``re``.

Regex rename rules use RE2 syntax; their ``to`` is literal text except ``\\1``..``\\9`` and
``\\g<name>`` / ``\\g<N>`` (a group of the regex, the empty string when it did not take part)
and ``\\\\`` (one backslash). A reference to a group the regex lacks is refused up front.
"""

from __future__ import annotations

import difflib
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol

import re2
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from app.engine.errors import InvalidRecipeError

__all__ = [
    "MAX_PATTERN_LENGTH",
    "MAX_RECIPE_FILE_BYTES",
    "MAX_RULES",
    "AdaptRule",
    "AutoInit",
    "ChannelsRule",
    "ConstantInit",
    "InitRule",
    "InterpolateRule",
    "KaimingNormalInit",
    "KeyMatcher",
    "KeyRule",
    "NormalInit",
    "PrefixRule",
    "Recipe",
    "Regex",
    "RegexRule",
    "RenameRule",
    "Replacement",
    "ResizeRule",
    "SourceSpec",
    "TruncNormalInit",
    "XavierUniformInit",
    "cite",
    "compile_pattern",
    "compile_patterns",
    "compile_regex",
    "load_recipe",
    "parse_replacement",
]

MAX_RULES = 1000
MAX_PATTERN_LENGTH = 1000
MAX_RECIPE_FILE_BYTES = 1 << 20
_MAX_ERRORS_SHOWN = 10


# ---------------------------------------------------------------------------------------------
# Patterns and regexes


class _RuleError(ValueError):
    """A rule is invalid; raised inside validators so pydantic records where it happened."""


class Regex(Protocol):
    """The part of a compiled ``re2`` regex the engine uses."""

    @property
    def groups(self) -> int: ...

    @property
    def groupindex(self) -> Mapping[str, int]: ...

    def fullmatch(self, text: str) -> Any: ...

    def subn(self, repl: Any, text: str, count: int = 0) -> tuple[str, int]: ...


def cite(section: str, index: int) -> str:
    """The name a report or an error uses for rule ``index`` of ``section`` (``rename[0]``)."""
    return f"{section}[{index}]"


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised to the caller; keep stderr clean
    return options


@functools.lru_cache(maxsize=4096)
def _compile_re2(pattern: str) -> Regex:
    """Compile ``pattern`` with RE2, explaining what RE2 refuses. Raises `_RuleError`."""
    try:
        regex: Regex = re2.compile(pattern, _re2_options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        raise _RuleError(
            f"invalid regex {pattern!r}: {detail} (Graft uses RE2 syntax: linear time, "
            "no backreferences or lookaround)"
        ) from None
    return regex


def _user_regex(pattern: str) -> Regex:
    """Compile a regex the user wrote. Raises `_RuleError`."""
    if not pattern:
        raise _RuleError("empty regex")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise _RuleError(
            f"regex is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
        )
    _refuse_backreferences(pattern)
    return _compile_re2(pattern)


def _refuse_backreferences(pattern: str) -> None:
    # RE2 rejects these too, but with "invalid escape sequence"; say what the user meant.
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] in "123456789" or pattern[i + 1] == "k":
                raise _RuleError(
                    f"regex {pattern!r} uses a backreference ({pattern[i : i + 2]}), which RE2 "
                    "does not support; backreferences belong in `to` (\\1, \\g<name>), "
                    "not in the pattern"
                )
            i += 2
            continue
        if pattern.startswith("(?P=", i):
            raise _RuleError(
                f"regex {pattern!r} uses a named backreference ((?P=...)), which RE2 does not "
                "support; refer to groups only in `to` (\\g<name>)"
            )
        i += 1


def compile_regex(pattern: str, *, rule: str | None = None) -> Regex:
    """Compile a user regex with RE2.

    Args:
        pattern: RE2 syntax; backreferences and lookaround are refused.
        rule: the citation to put on the error (``rename[3]``).

    Returns:
        The compiled regex (cached: the same pattern compiles once).

    Raises:
        InvalidRecipeError: the pattern is too long, uses a backreference or does not compile.
    """
    try:
        return _user_regex(pattern)
    except _RuleError as exc:
        raise InvalidRecipeError(str(exc), rule=rule) from None


def _literal_re2(char: str) -> str:
    if char.isalnum() or char == "_" or ord(char) >= 128:
        return char
    if char.isprintable() and char != " ":
        return "\\" + char  # RE2: a backslash before ASCII punctuation means the literal
    return f"\\x{{{ord(char):x}}}"


def _glob_to_re2(glob: str) -> str:
    """Translate an fnmatch-style glob into an RE2 pattern matching the whole key."""
    out: list[str] = ["(?s)"]
    i, n = 0, len(glob)
    while i < n:
        char = glob[i]
        i += 1
        if char == "*":
            if out[-1] != ".*":
                out.append(".*")
        elif char == "?":
            out.append(".")
        elif char == "[":
            # As fnmatch: a leading ! negates, a ] right after [ or [! is literal,
            # and a [ with no closing ] is itself literal.
            j = i
            if j < n and glob[j] == "!":
                j += 1
            if j < n and glob[j] == "]":
                j += 1
            while j < n and glob[j] != "]":
                j += 1
            if j >= n:
                out.append("\\[")
                continue
            body, i = glob[i:j], j + 1
            negate = body.startswith("!")
            if negate:
                body = body[1:]
            chars = "".join(c if c == "-" else _literal_re2(c) for c in body)
            out.append(f"[{'^' if negate else ''}{chars}]")
        else:
            out.append(_literal_re2(char))
    return "".join(out)


def _pattern_regex(text: str) -> Regex:
    """The RE2 regex a key pattern (glob or ``re:``) stands for. Raises `_RuleError`."""
    if not text:
        raise _RuleError("empty pattern; write a glob such as 'fc.*' or 're:<RE2 regex>'")
    if len(text) > MAX_PATTERN_LENGTH:
        raise _RuleError(
            f"pattern is {len(text)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
        )
    if text.startswith("re:"):
        if text == "re:":
            raise _RuleError("empty regex after 're:'; write e.g. 're:^fc\\..*'")
        return _user_regex(text[3:])
    try:
        return _compile_re2(_glob_to_re2(text))
    except _RuleError:
        raise _RuleError(
            f"invalid glob {text!r} (check its [...] classes: a range such as [z-a] is empty)"
        ) from None


def _check_pattern(text: str) -> str:
    _pattern_regex(text)
    return text


@dataclass(frozen=True, slots=True)
class KeyMatcher:
    """A compiled key pattern.

    Attributes:
        pattern: the pattern as the recipe wrote it (glob or ``re:<RE2>``).
        rule: the citation of the rule it came from (``drop[0]``), if any.
    """

    pattern: str
    rule: str | None
    _regex: Regex = field(repr=False, compare=False)

    def matches(self, key: str) -> bool:
        """Whether the pattern matches the whole of ``key``."""
        return self._regex.fullmatch(key) is not None


def compile_pattern(text: str, *, rule: str | None = None) -> KeyMatcher:
    """Compile one key pattern: a glob, or ``re:`` followed by an RE2 regex (full match).

    Args:
        text: the pattern.
        rule: the citation to carry and to put on errors (``drop[1]``).

    Raises:
        InvalidRecipeError: the pattern is empty, too long or does not compile.
    """
    try:
        return KeyMatcher(text, rule, _pattern_regex(text))
    except _RuleError as exc:
        raise InvalidRecipeError(str(exc), rule=rule) from None


def compile_patterns(patterns: Sequence[str], *, section: str) -> list[KeyMatcher]:
    """Compile a recipe list (``drop``, ``only``, ``freeze``), citing each as ``section[i]``."""
    return [compile_pattern(p, rule=cite(section, i)) for i, p in enumerate(patterns)]


# A parsed `to` of a regex rule: literal text pieces and group numbers, in order.
Replacement = tuple[str | int, ...]


def _parse_replacement(template: str, regex: Regex) -> Replacement:
    pieces: list[str | int] = []
    literal: list[str] = []
    i, n = 0, len(template)
    while i < n:
        char = template[i]
        if char != "\\":
            literal.append(char)
            i += 1
            continue
        nxt = template[i + 1] if i + 1 < n else ""
        if nxt == "\\":
            literal.append("\\")
            i += 2
            continue
        if nxt and nxt in "123456789":
            group: int | str = int(nxt)
            ref, i = template[i : i + 2], i + 2
        elif nxt == "g" and template.startswith("<", i + 2) and ">" in template[i + 3 :]:
            end = template.index(">", i + 3)
            name = template[i + 3 : end]
            ref, i = template[i : end + 1], end + 1
            group = int(name) if name.isdigit() else name
        else:
            escape = template[i : i + 2]
            raise _RuleError(
                f"`to` has an unknown escape {escape!r}; a replacement is literal text except "
                "\\1..\\9 and \\g<name> (write \\\\ for one backslash, and no backslash "
                "before '.')"
            )
        if isinstance(group, str):
            if group not in regex.groupindex:
                names = ", ".join(sorted(regex.groupindex)) or "none"
                raise _RuleError(
                    f"`to` refers to group {ref} but the regex has no group named {group!r} "
                    f"(named groups: {names})"
                )
            group = regex.groupindex[group]
        elif group > regex.groups:
            raise _RuleError(
                f"`to` refers to group {ref} but the regex has {regex.groups} capturing "
                f"group(s); add (...) around the part to keep"
            )
        if literal:
            pieces.append("".join(literal))
            literal = []
        pieces.append(group)
    if literal:
        pieces.append("".join(literal))
    return tuple(pieces)


def parse_replacement(template: str, regex: Regex, *, rule: str | None = None) -> Replacement:
    """Parse the ``to`` of a regex rule against its compiled regex.

    Args:
        template: literal text with ``\\1``..``\\9``, ``\\g<name>``, ``\\g<N>`` and ``\\\\``.
        regex: the rule's compiled regex, whose groups the references must exist in.
        rule: the citation to put on errors.

    Returns:
        Literal pieces (``str``) and group numbers (``int``), in order.

    Raises:
        InvalidRecipeError: an unknown escape or a reference to a missing group.
    """
    try:
        return _parse_replacement(template, regex)
    except _RuleError as exc:
        raise InvalidRecipeError(str(exc), rule=rule) from None


# ---------------------------------------------------------------------------------------------
# The models

_Text = Annotated[str, StringConstraints(max_length=MAX_PATTERN_LENGTH)]
_NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN_LENGTH)]
_KeyPattern = Annotated[str, AfterValidator(_check_pattern)]


class _Model(BaseModel):
    # Strict: a recipe is JSON/YAML, so "1" is not 1 and "yes" is not true.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SourceSpec(_Model):
    """Where the weights sit inside the source, and which wrapper prefixes to strip."""

    entry: _NonEmptyText = "auto"
    strip_prefixes: Literal["auto", "none"] | list[_NonEmptyText] = "auto"

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("entry")
    @classmethod
    def _check_entry(cls, entry: str) -> str:
        if entry != "auto" and "" in entry.split("."):
            raise _RuleError(f"entry {entry!r} has an empty path segment; write e.g. 'model.ema'")
        return entry

    @field_validator("strip_prefixes", mode="before")
    @classmethod
    def _check_strip_prefixes(cls, value: Any) -> Any:
        # Checked here so the message does not list both arms of the union.
        if value in ("auto", "none"):
            return value
        if isinstance(value, str):
            raise _RuleError(
                f"strip_prefixes is auto, none or a list of prefixes, got {value!r}; "
                f"write [{value!r}] to strip that prefix"
            )
        if not isinstance(value, list):
            raise _RuleError(f"strip_prefixes is auto, none or a list of prefixes, got {value!r}")
        if len(value) > MAX_RULES:
            raise _RuleError(f"strip_prefixes has {len(value)} entries; at most {MAX_RULES}")
        for prefix in value:
            if not isinstance(prefix, str) or not 0 < len(prefix) <= MAX_PATTERN_LENGTH:
                raise _RuleError(
                    f"strip_prefixes entries are non-empty strings such as 'module.', "
                    f"got {prefix!r}"
                )
        return value


class PrefixRule(_Model):
    """Keys starting with ``prefix`` get it replaced by ``to`` (an empty prefix prepends)."""

    prefix: _Text
    to: _Text


class RegexRule(_Model):
    """Every RE2 match of ``regex`` in the key is replaced by ``to`` (``\\1`` group refs)."""

    regex: _NonEmptyText
    to: _Text

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, regex: str) -> str:
        _user_regex(regex)
        return regex

    @model_validator(mode="after")
    def _check_to(self) -> RegexRule:
        _parse_replacement(self.to, _compile_re2(self.regex))
        return self


class KeyRule(_Model):
    """The one key equal to ``key`` becomes ``to``."""

    key: _NonEmptyText
    to: _NonEmptyText


_RENAME_KINDS: dict[str, type[_Model]] = {
    "prefix": PrefixRule,
    "regex": RegexRule,
    "key": KeyRule,
}


def _rename_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next((k for k, m in _RENAME_KINDS.items() if isinstance(value, m)), None)
    if isinstance(value, Mapping):
        kinds = [k for k in _RENAME_KINDS if k in value]
        return kinds[0] if len(kinds) == 1 else None
    return None


RenameRule = Annotated[
    Annotated[PrefixRule, Tag("prefix")]
    | Annotated[RegexRule, Tag("regex")]
    | Annotated[KeyRule, Tag("key")],
    Discriminator(
        _rename_kind,
        custom_error_type="rename_kind",
        custom_error_message="a rename rule takes exactly one of prefix, regex, key",
    ),
]


class ChannelsRule(_Model):
    """Pad or crop dim 1 (input channels) of a conv/linear weight."""

    match: _KeyPattern
    op: Literal["channels"]
    fill: Literal["zeros", "random", "mean", "repeat"] = "repeat"


class ResizeRule(_Model):
    """Crop or pad any dims; new slices are filled with ``fill`` (default ``zeros``)."""

    match: _KeyPattern
    op: Literal["resize"]
    fill: Literal["zeros", "random", "mean", "normal_like"] = "zeros"


class InterpolateRule(_Model):
    """Resample a 2-D grid of tokens (position embeddings), keeping ``prefix_tokens``."""

    match: _KeyPattern
    op: Literal["interpolate"]
    prefix_tokens: int = Field(default=1, ge=0, le=MAX_RULES)
    mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic"


AdaptRule = Annotated[ChannelsRule | ResizeRule | InterpolateRule, Field(discriminator="op")]

_ADAPT_OPS: dict[str, type[_Model]] = {
    "channels": ChannelsRule,
    "resize": ResizeRule,
    "interpolate": InterpolateRule,
}

_Finite = Annotated[float, Field(allow_inf_nan=False)]


class AutoInit(_Model):
    """Pick the init by module type and key name (SPEC §2)."""

    match: _KeyPattern
    fn: Literal["auto"]


class ConstantInit(_Model):
    """Fill with zeros or ones."""

    match: _KeyPattern
    fn: Literal["zeros", "ones"]


class NormalInit(_Model):
    """Draw from N(mean, std²)."""

    match: _KeyPattern
    fn: Literal["normal"]
    mean: _Finite = 0.0
    std: _Finite = Field(default=0.02, gt=0)


class TruncNormalInit(_Model):
    """Draw from N(mean, std²) truncated to [a, b] (absolute bounds, as torch.nn.init)."""

    match: _KeyPattern
    fn: Literal["trunc_normal"]
    mean: _Finite = 0.0
    std: _Finite = Field(default=0.02, gt=0)
    a: _Finite = -2.0
    b: _Finite = 2.0

    @model_validator(mode="after")
    def _check_bounds(self) -> TruncNormalInit:
        if self.a >= self.b:
            raise _RuleError(f"trunc_normal needs a < b, got a={self.a}, b={self.b}")
        return self


class XavierUniformInit(_Model):
    """Xavier/Glorot uniform with ``gain``."""

    match: _KeyPattern
    fn: Literal["xavier_uniform"]
    gain: _Finite = Field(default=1.0, gt=0)


class KaimingNormalInit(_Model):
    """Kaiming/He normal; defaults follow SPEC's ``auto`` for convs (fan_out, relu)."""

    match: _KeyPattern
    fn: Literal["kaiming_normal"]
    a: _Finite = 0.0
    mode: Literal["fan_in", "fan_out"] = "fan_out"
    nonlinearity: Literal["relu", "leaky_relu", "linear", "sigmoid", "tanh", "selu"] = "relu"


InitRule = Annotated[
    AutoInit | ConstantInit | NormalInit | TruncNormalInit | XavierUniformInit | KaimingNormalInit,
    Field(discriminator="fn"),
]

_INIT_FNS: dict[str, type[_Model]] = {
    "auto": AutoInit,
    "zeros": ConstantInit,
    "ones": ConstantInit,
    "normal": NormalInit,
    "trunc_normal": TruncNormalInit,
    "xavier_uniform": XavierUniformInit,
    "kaiming_normal": KaimingNormalInit,
}


def _default_init() -> list[InitRule]:
    return [AutoInit(match="*", fn="auto")]


class Recipe(_Model):
    """A recipe, version 1 (SPEC §2). Defaults are the SPEC's; a null field means its default."""

    version: Literal[1] = 1
    source: SourceSpec = Field(default_factory=SourceSpec)
    rename: list[RenameRule] = Field(default_factory=list, max_length=MAX_RULES)
    drop: list[_KeyPattern] = Field(default_factory=list, max_length=MAX_RULES)
    only: list[_KeyPattern] = Field(default_factory=list, max_length=MAX_RULES)
    shape_mismatch: Literal["skip", "error"] = "skip"
    adapt: list[AdaptRule] = Field(default_factory=list, max_length=MAX_RULES)
    missing: Literal["auto", "keep", "init", "error"] = "auto"
    init: list[InitRule] = Field(default_factory=_default_init, max_length=MAX_RULES)
    dtype: Literal["keep", "float32", "float16", "bfloat16"] = "keep"
    freeze: list[_KeyPattern] = Field(default_factory=list, max_length=MAX_RULES)
    freeze_bn: bool = False
    strict: bool = False
    align: Literal["off", "suggest", "apply"] = "off"
    seed: int = Field(default=0, ge=0, lt=1 << 63)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("version", mode="before")
    @classmethod
    def _version_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1 in Python; it is not a version
            raise _RuleError(f"unsupported recipe version {value!r}; this Graft reads version 1")
        return value

    @field_validator("align", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; the SPEC writes `align: off`.
        return "off" if value is False else value


# ---------------------------------------------------------------------------------------------
# Loading


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
    data = _read_recipe_file(Path(obj)) if isinstance(obj, str | Path) else obj
    if data is None:  # an empty file
        return Recipe()
    if not isinstance(data, Mapping):
        raise InvalidRecipeError(
            f"a recipe is a mapping such as {{version: 1, rename: [...]}}, "
            f"got {type(data).__name__}"
        )
    try:
        return Recipe.model_validate(dict(data))
    except ValidationError as exc:
        raise _recipe_error(exc) from None


# ---------------------------------------------------------------------------------------------
# Turning pydantic's errors into one message that cites rules


_LIST_SECTIONS = frozenset({"rename", "drop", "only", "adapt", "init", "freeze"})

# Tagged sections: (what the tag is called, tag -> model, an example rule).
_TAGGED: dict[str, tuple[str, dict[str, type[_Model]], str]] = {
    "rename": ("kind", _RENAME_KINDS, "{prefix: 'backbone.', to: 'encoder.'}"),
    "adapt": ("op", _ADAPT_OPS, "{match: 'conv1.weight', op: channels}"),
    "init": ("fn", _INIT_FNS, "{match: '*', fn: auto}"),
}

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
    kinds = [k for k in _RENAME_KINDS if k in value]
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
            return rule, _unknown_field(field_name, list(models[tag].model_fields), owner)
        if rule == "source":
            return rule, _unknown_field(field_name, list(SourceSpec.model_fields), "source")
        return rule, _unknown_field(field_name, list(Recipe.model_fields), "a version 1 recipe")
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
