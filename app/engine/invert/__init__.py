"""Inversion: the reverse of a recipe, rule by rule or, given the source, key by key.

:mod:`app.engine.invert.by_rule` turns renames, ``split``, ``merge``, ``transpose`` and
``reshape`` around rule by rule; when a recipe both renames and splits, merges or transforms,
:mod:`app.engine.invert.by_key` writes the reverse with one exact rule per key of the source.
This package sits above the recipe, the ops and planning, and imports them at the top.
"""

from app.engine.invert.by_key import invert_by_key
from app.engine.invert.by_rule import Inversion, invert_recipe

__all__ = ["Inversion", "invert_by_key", "invert_recipe"]
