"""A recipe as text, YAML or JSON (JSON is YAML): the one parser the API and web app share.

The docs write recipes in YAML and the CLI reads them from files; the web form sends what
the user typed as ``recipe_text`` and this module turns it into the document, with
:func:`yaml.safe_load` (no tags, no objects).
"""

from __future__ import annotations

from typing import Any

import yaml

from app.engine.errors import InvalidRecipeError

__all__ = ["parse_recipe_text", "pick_recipe"]

MAX_RECIPE_TEXT = 1_000_000


def parse_recipe_text(text: str) -> dict[str, Any] | None:
    """The recipe ``text`` holds, or None when it holds nothing (the defaults apply).

    Raises:
        InvalidRecipeError: not YAML (or JSON), or not a mapping.
    """
    if len(text) > MAX_RECIPE_TEXT:
        raise InvalidRecipeError(f"the recipe text is over {MAX_RECIPE_TEXT} characters")
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidRecipeError(f"not YAML or JSON{where}: {problem}") from None
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRecipeError(f"a recipe is a mapping (version, rename, …), not {_kind(value)}")
    return {str(k): v for k, v in value.items()}


def pick_recipe(
    recipe: dict[str, Any] | str | None, text: str | None
) -> dict[str, Any] | str | None:
    """The recipe of a request that may give it as ``recipe`` or ``recipe_text``, not both.

    Raises:
        InvalidRecipeError: both given, or the text does not parse.
    """
    if text is None:
        return recipe
    if recipe is not None:
        raise InvalidRecipeError("give the recipe as `recipe` or as `recipe_text`, not both")
    return parse_recipe_text(text)


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "a list"
    return "a string" if isinstance(value, str) else type(value).__name__
