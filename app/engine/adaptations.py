"""The adaptations an architecture declares for itself, as timm's ``pretrained_cfg`` does.

A registered architecture may name its stem (``first_conv``), its classifier (``classifier``)
and its position embedding (``pos_embed``, with ``num_prefix_tokens``), as a mapping in an
``adaptations`` attribute of its factory, or a class method ``adaptations(kwargs)`` returning one
(beside ``hf_config``). A timm model that declares nothing is read from its own
``pretrained_cfg`` and ``num_prefix_tokens``. When a source tensor's shape differs from the
target's on one of those keys and no recipe ``adapt`` rule matches it, the conversion applies
the usual adaptation by default, cited as the rule ``arch-default``:

- the stem's weight: ``channels`` with ``fill: repeat`` (timm's ``adapt_input_conv``);
- a position embedding ``[1, N, D]``: ``interpolate`` with ``prefix_tokens: num_prefix_tokens``
  (timm's ``resample_abs_pos_embed``); a table ``[N, D]`` (BERT's): ``resize`` with
  ``fill: normal_like``;
- the classifier: re-initialised by the recipe's ``init`` rules (timm's ``num_classes`` change).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from app.engine.errors import InvalidRecipeError, InvalidTargetError
from app.engine.ops.adapt import describe_adapt
from app.engine.recipe.model import ChannelsRule, InterpolateRule, ResizeRule

__all__ = ["ARCH_DEFAULT", "Adaptations", "DefaultAdapt", "read_adaptations"]

# The citation of an adaptation the architecture declared (entries' ``rules``, the rules list).
ARCH_DEFAULT = "arch-default"

DefaultAdapt = ChannelsRule | InterpolateRule | ResizeRule | Literal["init"]
_FIELDS = frozenset({"first_conv", "classifier", "pos_embed", "num_prefix_tokens"})


@dataclass(frozen=True)
class Adaptations:
    """What an architecture declares: module paths (or tensor keys) of its parts.

    Attributes:
        first_conv: the stem convolution(s), whose input channels follow ``in_chans``.
        classifier: the classifier head(s), whose outputs follow ``num_classes``.
        pos_embed: the position embedding(s).
        num_prefix_tokens: tokens before the position grid (a class token: 1).
    """

    first_conv: tuple[str, ...] = ()
    classifier: tuple[str, ...] = ()
    pos_embed: tuple[str, ...] = ()
    num_prefix_tokens: int = 1

    def pattern(self) -> str:
        """The declaration in words, for the report's rules list."""
        parts = [
            f"{name} {', '.join(paths)}"
            for name, paths in (
                ("first_conv", self.first_conv),
                ("classifier", self.classifier),
                ("pos_embed", self.pos_embed),
            )
            if paths
        ]
        return "; ".join(parts)

    def keys(self, target_keys: Iterable[str]) -> dict[str, str]:
        """The target keys the declaration covers: key -> ``first_conv``, ``classifier`` or
        ``pos_embed`` (a path names a tensor key, or the module whose tensors it holds)."""
        out: dict[str, str] = {}
        for key in target_keys:
            for part, paths in (("first_conv", self.first_conv), ("classifier", self.classifier),
                                ("pos_embed", self.pos_embed)):  # fmt: skip
                if any(key == p or key.rpartition(".")[0] == p for p in paths):
                    out.setdefault(key, part)
        return out

    def default(
        self, part: str, key: str, source: tuple[int, ...], target: tuple[int, ...]
    ) -> DefaultAdapt | None:
        """The adaptation for ``key`` (one of ``part``) from ``source`` to ``target`` shape,
        or ``None`` when the usual one cannot produce the target's shape."""
        rule: ChannelsRule | InterpolateRule | ResizeRule
        if part == "classifier":
            return "init"
        if part == "first_conv":
            if not key.endswith("weight") or len(target) < 2:
                return None
            rule = ChannelsRule(match=key, op="channels", fill="repeat")
        elif len(target) == 3:
            rule = InterpolateRule(
                match=key, op="interpolate", prefix_tokens=self.num_prefix_tokens
            )
        else:
            rule = ResizeRule(match=key, op="resize", fill="normal_like")
        try:
            describe_adapt(rule.op, source, target, key=key, **rule.options())
        except InvalidRecipeError:
            return None
        return rule


def read_adaptations(
    factory: Any, kwargs: Mapping[str, Any], model: Any = None
) -> Adaptations | None:
    """The adaptations ``factory`` declares (``adaptations``: a mapping, or a callable taking
    the kwargs), else those of a timm ``model``'s ``pretrained_cfg``; ``None`` when neither.

    Raises:
        InvalidTargetError: a declaration with unknown fields or values of the wrong type.
    """
    declared = getattr(factory, "adaptations", None)
    if callable(declared):
        declared = declared(dict(kwargs))
    if declared is None and model is not None:
        declared = _timm_declaration(model)
    if declared is None:
        return None
    if not isinstance(declared, Mapping) or set(declared) - _FIELDS:
        raise InvalidTargetError(
            f"adaptations of {getattr(factory, '__name__', factory)!r} must be a mapping of "
            f"{', '.join(sorted(_FIELDS))}, got {declared!r}"
        )
    prefix = declared.get("num_prefix_tokens", 1)
    if isinstance(prefix, bool) or not isinstance(prefix, int) or prefix < 0:
        raise InvalidTargetError(f"adaptations: num_prefix_tokens must be >= 0, got {prefix!r}")
    return Adaptations(
        _paths(declared.get("first_conv")),
        _paths(declared.get("classifier")),
        _paths(declared.get("pos_embed")),
        prefix,
    )


def _paths(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(v, str) and v for v in items):
        raise InvalidTargetError(f"adaptations: a path or a list of paths, got {value!r}")
    return tuple(items)


def _timm_declaration(model: Any) -> dict[str, Any] | None:
    cfg = getattr(model, "pretrained_cfg", None)
    if not isinstance(cfg, Mapping):
        return None
    declared: dict[str, Any] = {k: cfg[k] for k in ("first_conv", "classifier") if cfg.get(k)}
    if getattr(model, "pos_embed", None) is not None:
        declared["pos_embed"] = "pos_embed"
        embed_class = not getattr(model, "no_embed_class", False)
        declared["num_prefix_tokens"] = int(getattr(model, "num_prefix_tokens", 1)) * embed_class
    return declared
