"""Several sources in one recipe: ``sources`` names them, ``slices`` take layer ranges.

With several sources every source key is written ``NAME:KEY`` (``vision:blocks.0.attn.qkv.weight``),
so every rule that names source keys (``rename``, ``drop``, ``only``, ``split``, ``merge``,
``copy``) takes keys from one source by that prefix: ``{prefix: "vision:", to: "vision_model."}``.

A ``slices`` rule takes the layers ``[start, end)`` of one source (the end excluded, as mergekit's
``layer_range``) and renumbers them after the layers the slices before it took, dropping the
source's ``NAME:`` prefix: ``{from: a, layers: [0, 6]}`` then ``{from: b, layers: [6, 12]}``
gives ``h.0`` to ``h.5`` from ``a`` and ``h.6`` to ``h.11`` from ``b``. Layer keys of a sliced
source that no slice takes are dropped (rule ``slices``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, field_validator, model_validator

from app.engine.recipe.model_base import RecipeModel
from app.engine.recipe.patterns import MAX_PATTERN_LENGTH, RuleError

__all__ = [
    "MAX_LAYER",
    "MAX_SOURCES",
    "SOURCE_NAME",
    "LoraStep",
    "NamedSource",
    "SliceRule",
    "check_names",
    "qualify",
]

MAX_SOURCES = 64
MAX_LAYER = 1 << 20
# A source's name: what comes before the ':' of its keys (so it holds none).
SOURCE_NAME = r"^[A-Za-z_][A-Za-z0-9_-]{0,63}$"

_Name = Annotated[str, StringConstraints(pattern=SOURCE_NAME)]
_Text = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN_LENGTH)]
_Layer = Annotated[int, Field(ge=0, le=MAX_LAYER)]


def qualify(name: str, key: str) -> str:
    """A key as rules name it when there are several sources: ``NAME:KEY``."""
    return f"{name}:{key}"


class NamedSource(RecipeModel):
    """One of several sources: where it is (for the CLI), and how to read it.

    A plain string is its path. Fields left out take the recipe's ``source`` values.

    Attributes:
        path: the checkpoint (file, folder or sharded set), relative to the recipe file.
            Only the CLI reads it; a job names its sources by upload id instead.
        entry: as ``source.entry``.
        strip_prefixes: as ``source.strip_prefixes``.
    """

    path: _Text | None = None
    entry: _Text | None = None
    strip_prefixes: Literal["auto", "none"] | list[_Text] | None = None

    @model_validator(mode="before")
    @classmethod
    def _path_alone(cls, data: Any) -> Any:
        return {"path": data} if isinstance(data, str) else data

    @field_validator("strip_prefixes", mode="before")
    @classmethod
    def _check_strip(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in ("auto", "none"):
            raise RuleError(f"strip_prefixes is auto, none or a list of prefixes, got {value!r}")
        return value


class SliceRule(RecipeModel):
    """Layers ``[start, end)`` of source ``from``, renumbered after the slices before.

    Attributes:
        from_: the source's name (``from`` in documents); left out with one source.
        layers: ``[start, end]``, the end excluded (mergekit's ``layer_range``).
        prefix: what every layer key starts with before its number (``transformer.h.``);
            left out, the prefix followed by a number that has the most layers.
    """

    from_: _Name | None = Field(default=None, alias="from")
    layers: Annotated[list[_Layer], Field(min_length=2, max_length=2)]
    prefix: _Text | None = None

    @field_validator("layers")
    @classmethod
    def _check_range(cls, layers: list[int]) -> list[int]:
        if layers[0] >= layers[1]:
            raise RuleError(
                f"layers [{layers[0]}, {layers[1]}] is empty: write [start, end] with the end "
                "excluded, e.g. [0, 12] for layers 0 to 11"
            )
        return layers


class LoraStep(RecipeModel):
    """Merge a PEFT LoRA adapter (one source) into its base (another) as it is read:
    ``W + (alpha / r) * B @ A`` per target module (app.engine.lora), before any rename.

    Attributes:
        merge: the adapter source's name (PEFT's ``adapter_model.safetensors``).
        into: the base source's name; left out, the one other source.
        alpha: ``lora_alpha`` for every module, over the config's.
        config: ``adapter_config.json``'s content; left out, read from the adapter's folder
            (``graft submit`` sends it from there).
    """

    merge: _Name
    into: _Name | None = None
    alpha: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    config: dict[str, Any] | None = None


def check_names(sources: dict[str, NamedSource]) -> dict[str, NamedSource]:
    """``sources`` keys are names a key can be qualified by (no ``:``), at most 64 of them."""
    import re

    if len(sources) > MAX_SOURCES:
        raise RuleError(f"at most {MAX_SOURCES} sources, got {len(sources)}")
    for name in sources:
        if not re.match(SOURCE_NAME, name):
            raise RuleError(
                f"source name {name!r} should be letters, digits, '_' or '-' "
                "(it becomes the key prefix 'NAME:')"
            )
    return sources
