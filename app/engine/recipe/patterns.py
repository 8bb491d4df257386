"""Key patterns and rename regexes: globs and ``re:`` patterns, all run by RE2.

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

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import re2

from app.engine.errors import InvalidRecipeError

__all__ = [
    "MAX_PATTERN_LENGTH",
    "KeyMatcher",
    "Regex",
    "Replacement",
    "RuleError",
    "check_pattern",
    "check_user_regex",
    "cite",
    "compile_pattern",
    "compile_patterns",
    "compile_re2",
    "compile_regex",
    "parse_replacement",
    "split_replacement",
]

MAX_PATTERN_LENGTH = 1000


class RuleError(InvalidRecipeError, ValueError):
    """A rule is invalid; raised inside validators so pydantic records where it happened
    (hence a ``ValueError`` too), then raised again as :class:`InvalidRecipeError` naming
    the rule."""


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


# RE2's memory budget for one pattern (about two thirds of it for the compiled program): a
# key pattern needs a few hundred instructions, while ``\pL{1,300}`` would take 350,000 and
# half a second to build. Over the budget, compiling stops within milliseconds.
MAX_REGEX_MEMORY = 256 * 1024


def _re2_options() -> Any:
    options = re2.Options()
    options.log_errors = False  # the error is raised to the caller; keep stderr clean
    options.max_mem = MAX_REGEX_MEMORY
    return options


@functools.lru_cache(maxsize=4096)
def compile_re2(pattern: str) -> Regex:
    """Compile ``pattern`` with RE2, explaining what RE2 refuses. Raises `RuleError`."""
    try:
        regex: Regex = re2.compile(pattern, _re2_options())
    except re2.error as exc:
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode("utf-8", "replace")
        if "too large" in str(detail):
            detail = (
                f"{detail}: the compiled pattern is over RE2's {MAX_REGEX_MEMORY // 1024} KiB "
                "budget (narrow the character classes or the repetition counts)"
            )
        raise RuleError(
            f"invalid regex {pattern!r}: {detail} (Graft uses RE2 syntax: linear time, "
            "no backreferences or lookaround)"
        ) from None
    return regex


def check_user_regex(pattern: str) -> Regex:
    """Compile a regex the user wrote. Raises `RuleError`."""
    if not pattern:
        raise RuleError("empty regex")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise RuleError(
            f"regex is {len(pattern)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
        )
    _refuse_backreferences(pattern)
    return compile_re2(pattern)


def _refuse_backreferences(pattern: str) -> None:
    # RE2 rejects these too, but with "invalid escape sequence"; say what the user meant.
    i = 0
    while i < len(pattern):
        if pattern[i] == "\\" and i + 1 < len(pattern):
            if pattern[i + 1] in "123456789" or pattern[i + 1] == "k":
                raise RuleError(
                    f"regex {pattern!r} uses a backreference ({pattern[i : i + 2]}), which RE2 "
                    "does not support; backreferences belong in `to` (\\1, \\g<name>), "
                    "not in the pattern"
                )
            i += 2
            continue
        if pattern.startswith("(?P=", i):
            raise RuleError(
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
        return check_user_regex(pattern)
    except RuleError as exc:
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
    """The RE2 regex a key pattern (glob or ``re:``) stands for. Raises `RuleError`."""
    if not text:
        raise RuleError("empty pattern; write a glob such as 'fc.*' or 're:<RE2 regex>'")
    if len(text) > MAX_PATTERN_LENGTH:
        raise RuleError(
            f"pattern is {len(text)} characters long; at most {MAX_PATTERN_LENGTH} are allowed"
        )
    if text.startswith("re:"):
        if text == "re:":
            raise RuleError("empty regex after 're:'; write e.g. 're:^fc\\..*'")
        return check_user_regex(text[3:])
    try:
        return compile_re2(_glob_to_re2(text))
    except RuleError:
        raise RuleError(
            f"invalid glob {text!r} (check its [...] classes: a range such as [z-a] is empty)"
        ) from None


def check_pattern(text: str) -> str:
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
    except RuleError as exc:
        raise InvalidRecipeError(str(exc), rule=rule) from None


def compile_patterns(patterns: Sequence[str], *, section: str) -> list[KeyMatcher]:
    """Compile a recipe list (``drop``, ``only``, ``freeze``), citing each as ``section[i]``."""
    return [compile_pattern(p, rule=cite(section, i)) for i, p in enumerate(patterns)]


# A parsed `to` of a regex rule: literal text pieces and group numbers, in order.
Replacement = tuple[str | int, ...]


def split_replacement(template: str, regex: Regex) -> Replacement:
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
            raise RuleError(
                f"`to` has an unknown escape {escape!r}; a replacement is literal text except "
                "\\1..\\9 and \\g<name> (write \\\\ for one backslash, and no backslash "
                "before '.')"
            )
        if isinstance(group, str):
            if group not in regex.groupindex:
                names = ", ".join(sorted(regex.groupindex)) or "none"
                raise RuleError(
                    f"`to` refers to group {ref} but the regex has no group named {group!r} "
                    f"(named groups: {names})"
                )
            group = regex.groupindex[group]
        elif group > regex.groups:
            raise RuleError(
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
        return split_replacement(template, regex)
    except RuleError as exc:
        raise InvalidRecipeError(str(exc), rule=rule) from None
