"""What feeds each target key, from headers alone: renamed keys, ``split``, ``merge`` and ``copy``.

After renames and ``drop``/``only``, every kept source key feeds the target key of its new
name, unless a ``split`` or ``merge`` rule takes it: a split turns one key into several parts,
a merge concatenates several keys into one. A ``copy`` rule makes one key also feed another
target key (tied weights). Two rules feeding one key is an error that names both, and every
shape is checked here, before any tensor moves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from app.engine.errors import InvalidRecipeError
from app.engine.meta import TensorInfo
from app.engine.ops.multi import Part, describe_merge, describe_split, part_shape
from app.engine.recipe import Recipe, cite
from app.engine.recipe.patterns import RuleError
from app.engine.recipe.rename import Renamed
from app.engine.recipe.tensor_rules import NamePattern, SplitRule, compile_names

__all__ = ["Feed", "Feeds", "plan_feeds"]


@dataclass
class Feed:
    """One target key's value, before transforms and adaptation.

    Attributes:
        target: the key it feeds.
        sources: the source keys (as read) it comes from, in order.
        rules: the citations of the rules that made it.
        shape: its shape.
        dtype: its dtype (the sources').
        origin: the rule that decided this key, for conflict messages.
        part: for a split, the part of the source taken.
        merge_dim: for a merge, the dim the sources are concatenated along.
        source_shapes: for a merge, each source's shape.
        source_shape: the shape of the one source tensor read (``None`` for a merge).
        tied: fed by ``copy``.
        op: the op the report lists first (``split(0, 1/3)``, ``merge(0, 3)``).
        plain: fed by its renamed key alone (no split, merge or copy).
    """

    target: str
    sources: list[str]
    rules: list[str]
    shape: tuple[int, ...]
    dtype: str
    origin: str
    part: Part | None = None
    merge_dim: int | None = None
    source_shapes: list[tuple[int, ...]] | None = None
    source_shape: tuple[int, ...] | None = None
    tied: bool = False
    op: str | None = None
    plain: bool = False


@dataclass
class Feeds:
    """Every feed by target key, and how many groups each split/merge/copy rule formed."""

    by_target: dict[str, Feed] = field(default_factory=dict)
    matched: dict[str, int] = field(default_factory=dict)

    def add(self, feed: Feed) -> None:
        other = self.by_target.get(feed.target)
        if other is not None:
            raise InvalidRecipeError(
                f"{feed.target!r} is fed by both {other.origin} and {feed.origin}; a target "
                "key takes one source: narrow one of the rules, or drop one of the keys",
                rule=feed.origin if not feed.plain else other.origin,
            )
        self.by_target[feed.target] = feed


def _names(first: str, others: list[str], rule: str) -> NamePattern:
    try:
        return compile_names(first, others)
    except RuleError as exc:
        raise InvalidRecipeError(str(exc), rule=rule) from None


def _origin(renamed: Renamed) -> str:
    return renamed.rules[-1] if renamed.rules else f"source key {renamed.source!r}"


def plan_feeds(
    available: Mapping[str, Renamed],
    left_out: Mapping[str, str],
    infos: Mapping[str, TensorInfo],
    recipe: Recipe,
) -> Feeds:
    """Decide what feeds each target key.

    Args:
        available: renamed key -> where it came from, for the keys kept after drop/only.
        left_out: renamed key -> the rule that left it out (``drop[0]``, ``only``).
        infos: the source's tensors by source key (shapes and dtypes).
        recipe: the validated recipe.

    Returns:
        The feeds by target key, and the groups each split/merge/copy rule formed.

    Raises:
        InvalidRecipeError: two rules feed one key, a merge part is missing, dropped or
            excluded, or a shape does not fit; the error names the rule.
    """
    feeds = Feeds()
    taken = _Taken()
    for index, split in enumerate(recipe.split):
        _split_feeds(feeds, split, cite("split", index), available, infos, taken)
    for index, merge in enumerate(recipe.merge):
        rule = cite("merge", index)
        names = _names(merge.from_[0], [*merge.from_[1:], merge.to], rule)
        count = 0
        for key in list(available):
            if (match := names.match(key)) is None:
                continue
            keys = [key] + [names.expand(i, match) for i in range(len(merge.from_) - 1)]
            feeds.add(_merge_feed(keys, names.expand(len(merge.from_) - 1, match), merge.dim,
                                  rule, available, left_out, infos, taken))  # fmt: skip
            count += 1
        feeds.matched[rule] = count
    for key, renamed in available.items():
        if key not in taken.by:
            info = infos[renamed.source]
            feeds.add(Feed(key, [renamed.source], list(renamed.rules), info.shape, info.dtype,
                           _origin(renamed), source_shape=info.shape, plain=True))  # fmt: skip
    for index, copy in enumerate(recipe.copy_):
        rule = cite("copy", index)
        names = _names(copy.from_, [copy.to], rule)
        count = 0
        for key, renamed in available.items():
            if (match := names.match(key)) is None:
                continue
            info = infos[renamed.source]
            feeds.add(Feed(names.expand(0, match), [renamed.source], [*renamed.rules, rule],
                           info.shape, info.dtype, rule, source_shape=info.shape,
                           tied=True))  # fmt: skip
            count += 1
        feeds.matched[rule] = count
    return feeds


@dataclass
class _Taken:
    """The renamed keys a split or merge consumed, and which rule did."""

    by: dict[str, str] = field(default_factory=dict)

    def take(self, key: str, rule: str) -> None:
        if key in self.by:
            raise InvalidRecipeError(
                f"{key!r} is already taken by {self.by[key]}; a key can be split or merged once",
                rule=rule,
            )
        self.by[key] = rule


def _split_feeds(
    feeds: Feeds,
    split: SplitRule,
    rule: str,
    available: Mapping[str, Renamed],
    infos: Mapping[str, TensorInfo],
    taken: _Taken,
) -> None:
    """The parts of every key ``split`` matches, one feed each."""
    names = _names(split.from_, split.to, rule)
    count = 0
    for key, renamed in available.items():
        if (match := names.match(key)) is None:
            continue
        taken.take(key, rule)
        count += 1
        info = infos[renamed.source]
        try:
            parts = describe_split(
                info.shape, split.dim, len(split.to), split.sizes, key=key, groups=split.groups
            )
        except InvalidRecipeError as exc:
            raise InvalidRecipeError(exc.message, rule=rule) from None
        grouped = f", groups={split.groups}" if split.groups > 1 else ""
        for i, part in enumerate(parts):
            feeds.add(
                Feed(names.expand(i, match), [renamed.source], [*renamed.rules, rule],
                     part_shape(info.shape, part), info.dtype, rule, part=part,
                     source_shape=info.shape, op=f"split({part[0]}, {i + 1}/{len(parts)}{grouped})")
            )  # fmt: skip
    feeds.matched[rule] = count


def _merge_feed(
    keys: list[str],
    target: str,
    dim: int,
    rule: str,
    available: Mapping[str, Renamed],
    left_out: Mapping[str, str],
    infos: Mapping[str, TensorInfo],
    taken: _Taken,
) -> Feed:
    for key in keys:
        if key not in available:
            why = (
                f"it was left out by {left_out[key]}" if key in left_out else "no source key has it"
            )
            raise InvalidRecipeError(f"part {key!r} of {target!r} is missing: {why}", rule=rule)
    for key in keys:
        taken.take(key, rule)
    sources = [available[k].source for k in keys]
    shapes = [infos[s].shape for s in sources]
    dtypes = {infos[s].dtype for s in sources}
    if len(dtypes) > 1:
        raise InvalidRecipeError(
            f"the parts of {target!r} have different dtypes ({', '.join(sorted(dtypes))})",
            rule=rule,
        )
    try:
        shape = describe_merge(shapes, dim, keys=keys)
    except InvalidRecipeError as exc:
        raise InvalidRecipeError(exc.message, rule=rule) from None
    rules = [r for k in keys for r in available[k].rules]
    return Feed(target, sources, [*dict.fromkeys(rules), rule], shape, infos[sources[0]].dtype,
                rule, merge_dim=dim % len(shape), source_shapes=shapes,
                op=f"merge({dim % len(shape)}, {len(keys)})")  # fmt: skip
