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

from app.engine.recipe.load import MAX_RECIPE_FILE_BYTES, load_recipe
from app.engine.recipe.model import (
    MAX_RULES,
    AdaptRule,
    AutoInit,
    ChannelsRule,
    ConstantInit,
    InitRule,
    InterpolateRule,
    KaimingNormalInit,
    KeyRule,
    NormalInit,
    PrefixRule,
    Recipe,
    RegexRule,
    RenameRule,
    ResizeRule,
    SourceSpec,
    TruncNormalInit,
    XavierUniformInit,
)
from app.engine.recipe.patterns import (
    MAX_PATTERN_LENGTH,
    KeyMatcher,
    Regex,
    Replacement,
    cite,
    compile_pattern,
    compile_patterns,
    compile_regex,
    parse_replacement,
)

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
