"""Recipe rules that move whole tensors: ``split``, ``merge``, ``copy`` and ``transform``.

``split``, ``merge`` and ``copy`` name (renamed) source keys: the first name may be
``re:<RE2>`` with groups (a full match), the other names refer to those groups as ``\\1``…;
a plain name is one exact key. ``transform`` rules match target keys with a key pattern
(glob or ``re:``), like ``adapt``. Everything here is validated where it stands; planning
(:mod:`app.engine.plan.feeds`) checks the rules against the real keys and shapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, StringConstraints, model_validator

from app.engine.recipe.model_base import RecipeModel
from app.engine.recipe.patterns import (
    MAX_PATTERN_LENGTH,
    Regex,
    Replacement,
    RuleError,
    check_pattern,
    check_user_regex,
    compile_re2,
    split_replacement,
)

__all__ = [
    "MAX_DIM",
    "TRANSFORM_MODELS",
    "CopyRule",
    "MergeRule",
    "NamePattern",
    "PermuteRotaryTransform",
    "ReshapeTransform",
    "SliceTransform",
    "SplitRule",
    "TransformRule",
    "TransposeTransform",
    "compile_names",
]

MAX_DIM = 16
MAX_PARTS = 1000

_Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN_LENGTH)]
_KeyPattern = Annotated[str, AfterValidator(check_pattern)]
_Dim = Annotated[int, Field(ge=-MAX_DIM, lt=MAX_DIM)]


@dataclass(frozen=True)
class NamePattern:
    """The names of one split/merge/copy rule, compiled.

    Attributes:
        first: the regex of the first name (``None``: the first name is one exact key).
        first_text: the first name as written.
        templates: every other name, parsed (literal pieces and group numbers).
    """

    first: Regex | None
    first_text: str
    templates: tuple[Replacement, ...]

    def match(self, key: str) -> Any | None:
        """The match of the first name against ``key`` (a full match), or ``None``."""
        if self.first is None:
            return True if key == self.first_text else None
        return self.first.fullmatch(key)

    def expand(self, index: int, match: Any) -> str:
        """The ``index``-th other name for the key ``match`` came from."""
        pieces = self.templates[index]
        if match is True:
            return "".join(p for p in pieces if isinstance(p, str))
        return "".join(p if isinstance(p, str) else (match.group(p) or "") for p in pieces)


def compile_names(first: str, others: list[str]) -> NamePattern:
    """Compile a first name (exact key or ``re:<RE2>``) and the names that refer to its groups.

    Raises:
        RuleError: a bad regex, or a reference to a group the first name lacks (a plain first
            name has no groups, so the others are plain names too).
    """
    regex = check_user_regex(first[3:]) if first.startswith("re:") else None
    groups = compile_re2("") if regex is None else regex  # a plain name has no groups
    templates = []
    for name in others:
        try:
            templates.append(split_replacement(name, groups))
        except RuleError as exc:
            raise RuleError(f"name {name!r} " + str(exc).removeprefix("`to` ")) from None
    return NamePattern(regex, first, tuple(templates))


class SplitRule(RecipeModel):
    """One source key becomes several target keys, cut along ``dim``.

    With ``groups: G`` the source holds G equal blocks along ``dim``, each cut the same way
    (``sizes`` are then a block's), and every target key takes its piece of each block in
    order: a fused QKV stored per query group (Megatron's ``linear_qkv``, [q heads, k, v] of
    group 0, then of group 1, …) splits into whole q, k and v.
    """

    from_: _Name = Field(alias="from")
    to: list[_Name] = Field(min_length=2, max_length=MAX_PARTS)
    dim: _Dim = 0
    sizes: list[Annotated[int, Field(gt=0)]] | None = None
    groups: int = Field(default=1, ge=1, le=1 << 20)

    @model_validator(mode="after")
    def _check(self) -> SplitRule:
        compile_names(self.from_, self.to)
        if self.sizes is not None and len(self.sizes) != len(self.to):
            raise RuleError(
                f"sizes has {len(self.sizes)} entries but `to` names {len(self.to)} keys; "
                "give one size per key"
            )
        return self


class MergeRule(RecipeModel):
    """Several source keys become one target key, concatenated along ``dim`` in order."""

    from_: list[_Name] = Field(alias="from", min_length=2, max_length=MAX_PARTS)
    to: _Name
    dim: _Dim = 0

    @model_validator(mode="after")
    def _check(self) -> MergeRule:
        compile_names(self.from_[0], [*self.from_[1:], self.to])
        return self


class CopyRule(RecipeModel):
    """One source key also feeds another target key (tied weights)."""

    from_: _Name = Field(alias="from")
    to: _Name

    @model_validator(mode="after")
    def _check(self) -> CopyRule:
        compile_names(self.from_, [self.to])
        return self


class TransposeTransform(RecipeModel):
    """Swap two dims (a 2-D tensor's by default: GPT-2 ``Conv1D`` <-> ``Linear``)."""

    match: _KeyPattern
    op: Literal["transpose"]
    dims: Annotated[list[_Dim], Field(min_length=2, max_length=2)] | None = None


class SliceTransform(RecipeModel):
    """Keep ``start:stop:step`` along ``dim`` (e.g. drop a background class row)."""

    match: _KeyPattern
    op: Literal["slice"]
    dim: _Dim = 0
    start: int | None = None
    stop: int | None = None
    step: int = Field(default=1, ge=1)


class ReshapeTransform(RecipeModel):
    """Give the tensor another shape with as many elements (one dim may be -1)."""

    match: _KeyPattern
    op: Literal["reshape"]
    shape: list[Annotated[int, Field(ge=-1)]] = Field(max_length=MAX_DIM)

    @model_validator(mode="after")
    def _check(self) -> ReshapeTransform:
        if self.shape.count(-1) > 1:
            raise RuleError(f"shape {self.shape} has more than one -1; at most one dim is inferred")
        return self


class PermuteRotaryTransform(RecipeModel):
    """Reorder the rows of a q/k projection between the two rotary-embedding layouts.

    Meta's LLaMA keeps each head's rotary pairs interleaved (``x0, x1`` side by side);
    transformers' ``rotate_half`` wants them as two halves. ``to: halves`` (Meta ->
    transformers) is ``convert_llama_weights_to_hf.py``'s ``permute``; ``to: interleaved``
    undoes it. ``heads`` is the number of heads the tensor holds (key/value heads for ``k``).
    """

    match: _KeyPattern
    op: Literal["permute_rotary"]
    heads: int = Field(ge=1, le=1 << 16)
    to: Literal["halves", "interleaved"] = "halves"


TransformRule = Annotated[
    TransposeTransform | SliceTransform | ReshapeTransform | PermuteRotaryTransform,
    Field(discriminator="op"),
]

TRANSFORM_MODELS: dict[str, type[RecipeModel]] = {
    "transpose": TransposeTransform,
    "slice": SliceTransform,
    "reshape": ReshapeTransform,
    "permute_rotary": PermuteRotaryTransform,
}
