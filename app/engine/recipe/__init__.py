"""The recipe, version 1: a declarative, validated description of one conversion (SPEC §2).

The models here are plain data; behaviour lives in small functions (`load_recipe`,
`compile_pattern`, `compile_regex`, `parse_replacement`) that other engine modules call.
Every rule is cited by its list and index (`rename[0]`, `drop[1]`, `adapt[0]`, `init[2]`,
`freeze[0]`), the name reports and errors use.

Key patterns (`drop`, `only`, `freeze`, `adapt[].match`, `init[].match`: globs or ``re:``
RE2 patterns) and regex renames are described in :mod:`app.engine.recipe.patterns`.
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
