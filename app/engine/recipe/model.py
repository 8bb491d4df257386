"""The recipe, version 1, as pydantic models: plain data, every rule validated where it stands.

Every rule is cited by its list and index (`rename[0]`, `drop[1]`, `adapt[0]`, `init[2]`,
`freeze[0]`), the name reports and errors use (see :func:`app.engine.recipe.patterns.cite`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    Discriminator,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    Tag,
    field_validator,
    model_serializer,
    model_validator,
)

from app.engine.recipe.model_base import RecipeModel
from app.engine.recipe.patterns import (
    MAX_PATTERN_LENGTH,
    RuleError,
    check_pattern,
    check_user_regex,
    compile_re2,
    split_replacement,
)
from app.engine.recipe.several import LoraStep, NamedSource, SliceRule, check_names
from app.engine.recipe.tensor_rules import CopyRule, MergeRule, SplitRule, TransformRule

__all__ = [
    "ADAPT_MODELS",
    "DEFAULT_INIT",
    "INIT_MODELS",
    "MAX_RULES",
    "RENAME_MODELS",
    "AdaptRule",
    "AutoInit",
    "ChannelsRule",
    "ConstantInit",
    "InitRule",
    "InterpolateRule",
    "KaimingNormalInit",
    "KernelResizeRule",
    "KeyRule",
    "LoraStep",
    "NamedSource",
    "NormalInit",
    "PrefixRule",
    "PrefixTokens",
    "Recipe",
    "RecipeModel",
    "RegexRule",
    "RenameRule",
    "ResizeRule",
    "SliceRule",
    "SourceSpec",
    "TruncNormalInit",
    "XavierUniformInit",
]

MAX_RULES = 1000


_Text = Annotated[str, StringConstraints(max_length=MAX_PATTERN_LENGTH)]
_NonEmptyText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_PATTERN_LENGTH)]
_KeyPattern = Annotated[str, AfterValidator(check_pattern)]


class SourceSpec(RecipeModel):
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
            raise RuleError(f"entry {entry!r} has an empty path segment; write e.g. 'model.ema'")
        return entry

    @field_validator("strip_prefixes", mode="before")
    @classmethod
    def _check_strip_prefixes(cls, value: Any) -> Any:
        # Checked here so the message does not list both arms of the union.
        if value in ("auto", "none"):
            return value
        if isinstance(value, str):
            raise RuleError(
                f"strip_prefixes is auto, none or a list of prefixes, got {value!r}; "
                f"write [{value!r}] to strip that prefix"
            )
        if not isinstance(value, list):
            raise RuleError(f"strip_prefixes is auto, none or a list of prefixes, got {value!r}")
        if len(value) > MAX_RULES:
            raise RuleError(f"strip_prefixes has {len(value)} entries; at most {MAX_RULES}")
        for prefix in value:
            if not isinstance(prefix, str) or not 0 < len(prefix) <= MAX_PATTERN_LENGTH:
                raise RuleError(
                    f"strip_prefixes entries are non-empty strings such as 'module.', "
                    f"got {prefix!r}"
                )
        return value


class PrefixRule(RecipeModel):
    """Keys starting with ``prefix`` get it replaced by ``to`` (an empty prefix prepends)."""

    prefix: _Text
    to: _Text


class RegexRule(RecipeModel):
    """Every RE2 match of ``regex`` in the key is replaced by ``to`` (``\\1`` group refs)."""

    regex: _NonEmptyText
    to: _Text

    @field_validator("regex")
    @classmethod
    def _check_regex(cls, regex: str) -> str:
        check_user_regex(regex)
        return regex

    @model_validator(mode="after")
    def _check_to(self) -> RegexRule:
        split_replacement(self.to, compile_re2(self.regex))
        return self


class KeyRule(RecipeModel):
    """The one key equal to ``key`` becomes ``to``."""

    key: _NonEmptyText
    to: _NonEmptyText


RENAME_MODELS: dict[str, type[RecipeModel]] = {
    "prefix": PrefixRule,
    "regex": RegexRule,
    "key": KeyRule,
}


def _rename_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return next((k for k, m in RENAME_MODELS.items() if isinstance(value, m)), None)
    if isinstance(value, Mapping):
        kinds = [k for k in RENAME_MODELS if k in value]
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


class _AdaptBase(RecipeModel):
    def options(self) -> dict[str, Any]:
        """The op's options: every field but ``match`` and ``op`` (``apply_adapt``'s kwargs)."""
        return self.model_dump(exclude={"match", "op"})


class ChannelsRule(_AdaptBase):
    """Pad or crop dim 1 (input channels) of a conv/linear weight."""

    match: _KeyPattern
    op: Literal["channels"]
    fill: Literal["zeros", "random", "mean", "repeat"] = "repeat"


class ResizeRule(_AdaptBase):
    """Crop or pad any dims; new slices are filled with ``fill`` (default ``zeros``)."""

    match: _KeyPattern
    op: Literal["resize"]
    fill: Literal["zeros", "random", "mean", "normal_like"] = "zeros"


class PrefixTokens(RecipeModel):
    """Different prefix-token counts on each side (e.g. a class token, then 4 registers)."""

    source: int = Field(ge=0, le=MAX_RULES)
    target: int = Field(ge=0, le=MAX_RULES)


_Side = Annotated[int, Field(ge=1, le=1 << 16)]
_Grid = Annotated[list[_Side], Field(min_length=2, max_length=2)]


class InterpolateRule(_AdaptBase):
    """Resample a 2-D grid of tokens (position embeddings) as timm's ``resample_abs_pos_embed``."""

    match: _KeyPattern
    op: Literal["interpolate"]
    prefix_tokens: Annotated[int, Field(ge=0, le=MAX_RULES)] | PrefixTokens = 1
    mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    antialias: bool = True
    grid: _Grid | None = None  # [h, w] of the target grid; default square
    source_grid: _Grid | None = None  # [h, w] of the source grid; default square

    @field_validator("prefix_tokens", mode="before")
    @classmethod
    def _check_prefix_tokens(cls, value: Any) -> Any:
        # Checked here so the message does not list both arms of the union.
        counts = value.values() if isinstance(value, dict) else [value]
        if isinstance(value, dict) and set(value) != {"source", "target"}:
            raise RuleError(f"prefix_tokens is a count or {{source: N, target: M}}, got {value!r}")
        for count in counts:
            if isinstance(count, bool) or not isinstance(count, int):
                raise RuleError(f"prefix_tokens counts are integers, got {count!r}")
            if count < 0:
                raise RuleError(f"prefix_tokens should be >= 0, got {count}")
            if count > MAX_RULES:
                raise RuleError(f"prefix_tokens should be at most {MAX_RULES}, got {count}")
        return value


class KernelResizeRule(_AdaptBase):
    """Resample a conv kernel's spatial dims as timm's ``resample_patch_embed`` (FlexiViT)."""

    match: _KeyPattern
    op: Literal["kernel_resize"]
    mode: Literal["bicubic", "bilinear", "nearest"] = "bicubic"
    antialias: bool = True


AdaptRule = Annotated[
    ChannelsRule | ResizeRule | InterpolateRule | KernelResizeRule, Field(discriminator="op")
]

ADAPT_MODELS: dict[str, type[RecipeModel]] = {
    "channels": ChannelsRule,
    "resize": ResizeRule,
    "interpolate": InterpolateRule,
    "kernel_resize": KernelResizeRule,
}

_Finite = Annotated[float, Field(allow_inf_nan=False)]


class AutoInit(RecipeModel):
    """Pick the init by module type and key name (SPEC §2)."""

    match: _KeyPattern
    fn: Literal["auto"]


class ConstantInit(RecipeModel):
    """Fill with zeros or ones."""

    match: _KeyPattern
    fn: Literal["zeros", "ones"]


class NormalInit(RecipeModel):
    """Draw from N(mean, std²)."""

    match: _KeyPattern
    fn: Literal["normal"]
    mean: _Finite = 0.0
    std: _Finite = Field(default=0.02, gt=0)


class TruncNormalInit(RecipeModel):
    """Draw from N(mean, std²) truncated to [a, b].

    ``a`` and ``b`` are absolute bounds, as in ``torch.nn.init``; left out, they are
    mean ± 2 std, the same cut-off ``fn: auto`` uses, so the two never disagree.
    """

    match: _KeyPattern
    fn: Literal["trunc_normal"]
    mean: _Finite = 0.0
    std: _Finite = Field(default=0.02, gt=0)
    a: _Finite | None = None
    b: _Finite | None = None

    @model_validator(mode="after")
    def _check_bounds(self) -> TruncNormalInit:
        a = self.mean - 2 * self.std if self.a is None else self.a
        b = self.mean + 2 * self.std if self.b is None else self.b
        if a >= b:
            raise RuleError(f"trunc_normal needs a < b, got a={a}, b={b}")
        return self


class XavierUniformInit(RecipeModel):
    """Xavier/Glorot uniform with ``gain``."""

    match: _KeyPattern
    fn: Literal["xavier_uniform"]
    gain: _Finite = Field(default=1.0, gt=0)


class KaimingNormalInit(RecipeModel):
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

INIT_MODELS: dict[str, type[RecipeModel]] = {
    "auto": AutoInit,
    "zeros": ConstantInit,
    "ones": ConstantInit,
    "normal": NormalInit,
    "trunc_normal": TruncNormalInit,
    "xavier_uniform": XavierUniformInit,
    "kaiming_normal": KaimingNormalInit,
}


# The init list a recipe has when it does not write one: never reported as unmatched.
DEFAULT_INIT = AutoInit(match="*", fn="auto")


def _default_init() -> list[InitRule]:
    return [DEFAULT_INIT]


class Recipe(RecipeModel):
    """A recipe, version 1 (SPEC §2). Defaults are the SPEC's; a null field means its default."""

    version: Literal[1] = 1
    source: SourceSpec = Field(default_factory=SourceSpec)
    # Several sources (app.engine.recipe.several): their keys are written NAME:KEY.
    sources: dict[str, NamedSource] = Field(default_factory=dict)
    slices: list[SliceRule] = Field(default_factory=list, max_length=MAX_RULES)
    lora: LoraStep | None = None
    rename: list[RenameRule] = Field(default_factory=list, max_length=MAX_RULES)
    drop: list[_KeyPattern] = Field(default_factory=list, max_length=MAX_RULES)
    only: list[_KeyPattern] = Field(default_factory=list, max_length=MAX_RULES)
    split: list[SplitRule] = Field(default_factory=list, max_length=MAX_RULES)
    merge: list[MergeRule] = Field(default_factory=list, max_length=MAX_RULES)
    # `copy` would shadow BaseModel.copy: the field is `copy_` in code, `copy` in documents.
    copy_: list[CopyRule] = Field(default_factory=list, alias="copy", max_length=MAX_RULES)
    transform: list[TransformRule] = Field(default_factory=list, max_length=MAX_RULES)
    shape_mismatch: Literal["skip", "error"] = "skip"
    adapt: list[AdaptRule] = Field(default_factory=list, max_length=MAX_RULES)
    missing: Literal["auto", "keep", "init", "error"] = "auto"
    init: list[InitRule] = Field(default_factory=_default_init, max_length=MAX_RULES)
    dtype: Literal["keep", "float32", "float16", "bfloat16"] = "keep"
    freeze: list[_KeyPattern] = Field(default_factory=list, max_length=MAX_RULES)
    freeze_bn: bool = False
    strict: bool = False
    align: Literal["off", "suggest", "apply"] = "off"
    align_min_confidence: float = Field(default=0.9, ge=0.0, le=1.0)  # SPEC §2.2
    unmatched: Literal["error", "warn"] = "error"
    allow_empty: bool = False
    seed: int = Field(default=0, ge=0, lt=1 << 63)
    # Parity (SPEC §3.2), when a reference model is given: a divergence refuses the
    # conversion (`error`) or is only reported (`warn`); tolerances are float32's.
    parity: Literal["error", "warn"] = "error"
    parity_atol: float = Field(default=1e-5, ge=0)
    parity_rtol: float = Field(default=1e-4, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _null_is_default(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @model_serializer(mode="wrap")
    def _omit_unused_steps(self, handler: SerializerFunctionWrapHandler) -> Any:
        # Recipes with one source dump (and hash) as they did before these fields existed.
        data = handler(self)
        if isinstance(data, dict):
            for name, empty in (("sources", {}), ("slices", []), ("lora", None)):
                if data.get(name, empty) == empty:
                    data.pop(name, None)
        return data

    @field_validator("sources")
    @classmethod
    def _check_sources(cls, sources: dict[str, NamedSource]) -> dict[str, NamedSource]:
        return check_names(sources)

    @model_validator(mode="after")
    def _check_slices(self) -> Recipe:
        for index, rule in enumerate(self.slices):
            where = f"slices[{index}]"
            if rule.from_ is None and len(self.sources) > 1:
                raise RuleError(f"{where} needs `from`: one of {', '.join(self.sources)}")
            if rule.from_ is not None and rule.from_ not in self.sources:
                named = ", ".join(self.sources) or "none (the recipe has no `sources`)"
                raise RuleError(f"{where} takes from {rule.from_!r}; the sources are {named}")
        if self.lora is not None:
            self.lora_base()
        return self

    def lora_base(self) -> str:
        """The source ``lora`` merges into: ``lora.into``, or the one other source."""
        step = self.lora
        if step is None:
            raise RuleError("the recipe has no `lora` step")
        others = [n for n in self.sources if n != step.merge]
        if step.merge not in self.sources or (step.into and step.into not in others):
            raise RuleError(
                f"lora merges {step.merge!r} into {step.into or 'the other source'!r}: name "
                f"both in `sources` (e.g. sources: {{base: …, adapter: …}})"
            )
        if step.into is None and len(others) != 1:
            raise RuleError(f"lora: say which source to merge into (`into`: {', '.join(others)})")
        return step.into or others[0]

    def source_spec(self, name: str) -> SourceSpec:
        """How to read source ``name``: its ``sources`` entry over ``source``."""
        named = self.sources.get(name)
        if named is None:
            return self.source
        return SourceSpec(
            entry=named.entry or self.source.entry,
            strip_prefixes=(
                named.strip_prefixes
                if named.strip_prefixes is not None
                else self.source.strip_prefixes
            ),
        )

    @field_validator("version", mode="before")
    @classmethod
    def _version_not_bool(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1 in Python; it is not a version
            raise RuleError(f"unsupported recipe version {value!r}; this Graft reads version 1")
        return value

    @field_validator("align", mode="before")
    @classmethod
    def _yaml_off(cls, value: Any) -> Any:
        # YAML 1.1 reads a bare `off` as false; the SPEC writes `align: off`.
        return "off" if value is False else value
