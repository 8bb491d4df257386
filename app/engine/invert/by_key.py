"""The reverse of a recipe, key by key, from the source's header.

A conversion renames before it splits or merges, so a recipe that does both cannot be turned
around rule by rule (:mod:`app.engine.invert`). Given the source, though, every key's
fate is known from its header: the reverse is written with one exact rule per key (a ``key``
rename back to its source name, a ``merge`` of each split's parts, a ``split`` of each merged
key with its parts' sizes, and each transpose or reshape undone on its key), which a conversion
runs in its fixed order without ambiguity.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from app.engine.errors import InvalidRecipeError
from app.engine.invert.rules import unpermute
from app.engine.meta import TensorInfo
from app.engine.ops.multi import describe_transform
from app.engine.plan.feeds import Feed, plan_feeds
from app.engine.recipe import Recipe, cite, compile_pattern
from app.engine.recipe.rename import rename_keys
from app.engine.recipe.tensor_rules import (
    PermuteRotaryTransform,
    ReshapeTransform,
    TransformRule,
    TransposeTransform,
)

__all__ = ["invert_by_key"]


def invert_by_key(recipe: Recipe, source: Mapping[str, TensorInfo]) -> tuple[dict[str, Any], str]:
    """The reverse of ``recipe`` for this source, one exact rule per key.

    Args:
        recipe: a recipe of renames, split, merge, transpose and reshape (already checked).
        source: the source's tensors (after prefix stripping).

    Returns:
        The reverse recipe as a document, and a note saying what was proved.

    Raises:
        InvalidRecipeError: a transform on a split or merged key (it would have to run before
            the reverse merge or split), or renames that are not one-to-one on this source.
    """
    renamed = rename_keys(list(source), recipe.rename).renamed
    available = {r.key: r for r in renamed.values()}
    feeds = plan_feeds(available, {}, source, recipe)
    matchers = [
        compile_pattern(r.match, rule=cite("transform", i)) for i, r in enumerate(recipe.transform)
    ]
    renames: list[dict[str, str]] = []
    merges: dict[str, list[tuple[int, str, int]]] = {}  # source -> (start, target, dim)
    splits: list[dict[str, Any]] = []
    transforms: list[dict[str, Any]] = []
    for target, feed in feeds.by_target.items():
        hits = [i for i, m in enumerate(matchers) if m.matches(target)]
        if hits and not feed.plain:
            raise InvalidRecipeError(
                f"transforms {target!r}, which a split or merge makes; the reverse would have "
                "to undo it before merging or splitting back",
                rule=cite("transform", hits[0]),
            )
        if feed.part is not None:
            dim, start, _, groups = feed.part
            if groups > 1:
                raise InvalidRecipeError(
                    f"{target!r} comes from a split with groups; its inverse (a merge that "
                    "interleaves the groups) is not built yet"
                )
            merges.setdefault(feed.sources[0], []).append((start, target, dim))
        elif feed.merge_dim is not None and feed.source_shapes is not None:
            splits.append(
                {"from": target, "to": list(feed.sources), "dim": feed.merge_dim,
                 "sizes": [s[feed.merge_dim] for s in feed.source_shapes]}
            )  # fmt: skip
        else:
            if target != feed.sources[0]:
                renames.append({"key": target, "to": feed.sources[0]})
            transforms += _undo(recipe.transform, hits, feed)
    out: dict[str, Any] = {"version": 1}
    if renames:
        out["rename"] = renames
    if splits:
        out["split"] = splits
    if merges:
        out["merge"] = [
            {"from": [t for _, t, _ in sorted(parts)], "to": src, "dim": parts[0][2]}
            for src, parts in merges.items()
        ]
    if transforms:
        out["transform"] = transforms
    return out, _prove(renames, feeds.by_target, renamed)


def _undo(rules: Sequence[TransformRule], hits: list[int], feed: Feed) -> list[dict[str, Any]]:
    """The transforms that undo ``hits`` on ``feed``'s key, last first, matching its source name."""
    shapes = [feed.shape]
    for i in hits:
        shape, _ = describe_transform(rules[i], shapes[-1], key=feed.target)
        shapes.append(shape)
    match = _literal_glob(feed.sources[0])
    undo: list[dict[str, Any]] = []
    for step, i in reversed(list(enumerate(hits))):
        rule = rules[i]
        if isinstance(rule, TransposeTransform):
            undo.append(
                {"match": match, "op": "transpose", **({"dims": rule.dims} if rule.dims else {})}
            )
        elif isinstance(rule, ReshapeTransform):
            undo.append({"match": match, "op": "reshape", "shape": list(shapes[step])})
        elif isinstance(rule, PermuteRotaryTransform):
            undo.append(unpermute(rule, match))
        else:  # refused before: only transpose and reshape get here
            raise InvalidRecipeError(
                f"a {rule.op} transform cannot be inverted", rule=cite("transform", i)
            )
    return undo


def _literal_glob(key: str) -> str:
    """A glob that matches exactly ``key`` (``*``, ``?`` and ``[`` in a class of their own)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in key)


def _prove(
    renames: list[dict[str, str]], targets: Mapping[str, Feed], renamed: Mapping[str, Any]
) -> str:
    """The reverse renames, run on the forward's output keys, give back each source name."""
    from app.engine.recipe.load import load_recipe

    rules = load_recipe({"rename": renames}).rename
    back = rename_keys(list(targets), rules).renamed
    wrong = [
        (t, back[t].key)
        for t, feed in targets.items()
        if feed.plain and back[t].key != feed.sources[0]
    ]
    if wrong:
        key, got = wrong[0]
        raise InvalidRecipeError(
            f"the renames are not one-to-one on this source: {key!r} comes back as {got!r}",
            rule="rename",
        )
    return (
        f"proved: the renames map the source's {len(renamed)} keys one-to-one and back "
        "(the reverse is written key by key: the recipe renames and also splits, merges or "
        "transforms)"
    )
