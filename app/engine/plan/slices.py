"""``slices``: layer ranges taken from sources and renumbered, before any rename.

A slice ``{from: a, layers: [s, e]}`` takes the keys ``a:<prefix><i>.<rest>`` for ``s <= i < e``
and names them ``<prefix><n>.<rest>``, ``n`` counting on from the layers the slices before it
took. The prefix is the slice's ``prefix``, or the one followed by a layer number that has the
most layers in that source. Layer keys of a sliced source that no slice takes are dropped
(rule ``slices``); keys outside its layers (embeddings, a final norm) are left as they are, for
``rename`` to take from the source they want.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from app.engine.errors import InvalidRecipeError
from app.engine.recipe import cite
from app.engine.recipe.several import SliceRule

__all__ = ["SLICES_RULE", "Sliced", "slice_keys"]

SLICES_RULE = "slices"


@dataclass
class Sliced:
    """What ``slices`` did to the source keys.

    Attributes:
        keys: every source key that goes on to ``rename``, as slicing named it (in order).
        origin: sliced name -> (source key, the slice's citation), for the sliced keys.
        dropped: source keys of a sliced source's layers that no slice takes.
        matched: for each slice, the keys it took.
    """

    keys: list[str]
    origin: dict[str, tuple[str, str]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    matched: list[int] = field(default_factory=list)


def _layer(key: str, prefix: str) -> tuple[int, str] | None:
    """``key``'s layer number and the rest after it, when it is ``<prefix><n>.<rest>``."""
    if not key.startswith(prefix):
        return None
    number, dot, rest = key[len(prefix) :].partition(".")
    if not dot or not number.isdigit() or (number != "0" and number.startswith("0")):
        return None
    return int(number), rest


def _detect_prefix(keys: Sequence[str], citation: str) -> str:
    """The prefix followed by a layer number with the most distinct layers."""
    layers: dict[str, set[str]] = {}
    for key in keys:
        parts = key.split(".")
        for index, part in enumerate(parts[:-1]):
            if part.isdigit():
                layers.setdefault(".".join(parts[:index]) + "." if index else "", set()).add(part)
                break
    if not layers:
        raise InvalidRecipeError(
            "found no numbered layers (keys like 'h.0.attn.weight'); give `prefix`", rule=citation
        )
    ranked = sorted(layers.items(), key=lambda kv: -len(kv[1]))
    if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
        raise InvalidRecipeError(
            f"both {ranked[0][0]!r} and {ranked[1][0]!r} have {len(ranked[0][1])} numbered "
            "layers; say which with `prefix`",
            rule=citation,
        )
    return ranked[0][0]


def slice_keys(
    keys: Sequence[str], slices: Sequence[SliceRule], *, names: Sequence[str] = ()
) -> Sliced:
    """Apply ``slices`` to the source keys (``NAME:KEY`` when several sources are ``names``).

    Raises:
        InvalidRecipeError: a slice asks for layers its source lacks, two slices take one
            layer, or a source's layers cannot be told apart (naming the slice).
    """
    if not slices:
        return Sliced(list(keys))
    taken: dict[str, tuple[str, str]] = {}  # source key -> (new key, citation)
    sliced: dict[str, set[str]] = {}  # qualifier -> the layer prefixes sliced in it
    matched: list[int] = []
    count = 0
    for index, rule in enumerate(slices):
        citation = cite(SLICES_RULE, index)
        qualifier = f"{rule.from_ or names[0]}:" if names else ""
        own = [k[len(qualifier) :] for k in keys if k.startswith(qualifier)]
        prefix = rule.prefix if rule.prefix is not None else _detect_prefix(own, citation)
        sliced.setdefault(qualifier, set()).add(prefix)
        start, end = rule.layers
        found: set[int] = set()
        for key in own:
            layer = _layer(key, prefix)
            if layer is None or not start <= layer[0] < end:
                continue
            found.add(layer[0])
            if qualifier + key in taken:
                raise InvalidRecipeError(
                    f"takes {qualifier + key!r}, which {taken[qualifier + key][1]} took already",
                    rule=citation,
                )
            taken[qualifier + key] = (f"{prefix}{count + layer[0] - start}.{layer[1]}", citation)
        absent = sorted(set(range(start, end)) - found)
        if absent:
            raise InvalidRecipeError(
                f"source {rule.from_ or 'the source'} has no layer {absent[0]} under "
                f"{prefix!r} (layers [{start}, {end}] asked, the end excluded)",
                rule=citation,
            )
        matched.append(sum(1 for c in taken.values() if c[1] == citation))
        count += end - start
    return _sliced(keys, taken, sliced, matched)


def _sliced(
    keys: Sequence[str],
    taken: dict[str, tuple[str, str]],
    sliced: dict[str, set[str]],
    matched: list[int],
) -> Sliced:
    out = Sliced([], matched=matched)
    for key in keys:
        if key in taken:
            new, citation = taken[key]
            out.keys.append(new)
            out.origin[new] = (key, citation)
            continue
        qualifier = next((q for q in sliced if key.startswith(q)), None)
        if qualifier is not None and any(
            _layer(key[len(qualifier) :], p) is not None for p in sliced[qualifier]
        ):
            out.dropped.append(key)
        else:
            out.keys.append(key)
    seen: set[str] = set()
    for key in out.keys:
        if key in seen:
            theirs = out.origin.get(key, (key, ""))[0]
            raise InvalidRecipeError(
                f"slices name {theirs!r} {key!r}, which a source key already is; rename one",
                rule=SLICES_RULE,
            )
        seen.add(key)
    return out
