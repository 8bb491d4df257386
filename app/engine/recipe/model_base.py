"""The base of every recipe model: strict, frozen, unknown fields refused."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["RecipeModel"]


class RecipeModel(BaseModel):
    """A recipe rule or section: plain, validated data."""

    # Strict: a recipe is JSON/YAML, so "1" is not 1 and "yes" is not true. `from` is a
    # Python keyword, so those fields are `from_` in code and `from` in every document.
    model_config = ConfigDict(
        extra="forbid", strict=True, frozen=True, validate_by_name=True, serialize_by_alias=True
    )
