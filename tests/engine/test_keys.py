"""Key grouping: exact patterns, and every group is exactly the product it claims."""

from __future__ import annotations

import itertools
import re

import pytest

from app.engine.keys import KeyGroup, group_keys


def _expand(pattern: str) -> set[str]:
    """Every key a pattern claims: ``{a,b}`` alternatives and ``{0..2}`` ranges, multiplied."""
    parts = re.split(r"(\{[^}]*\})", pattern)
    choices: list[list[str]] = []
    for part in parts:
        if not (part.startswith("{") and part.endswith("}")):
            choices.append([part])
        elif ".." in part:
            lo, hi = part[1:-1].split("..")
            choices.append([str(n) for n in range(int(lo), int(hi) + 1)])
        else:
            choices.append(part[1:-1].split(","))
    return {"".join(c) for c in itertools.product(*choices)}


def _assert_partition(keys: list[str], groups: list[KeyGroup]) -> None:
    seen = [k for g in groups for k in g.keys]
    assert sorted(seen) == sorted(keys)  # every key in exactly one group
    assert len(seen) == len(set(seen))
    for group in groups:
        assert _expand(group.pattern) == set(group.keys), group.pattern


def _resnet_like() -> list[str]:
    keys = ["conv1.weight"]
    keys += [f"bn1.{s}" for s in ("weight", "bias", "running_mean", "running_var")]
    keys.append("bn1.num_batches_tracked")
    for layer, block, conv, what in itertools.product((1, 2), range(3), (1, 2), ("weight", "bias")):
        keys.append(f"layer{layer}.{block}.conv{conv}.{what}")
    keys += ["fc.weight", "fc.bias"]
    return keys


def test_resnet_like_keys_give_exact_patterns() -> None:
    keys = _resnet_like()
    groups = group_keys(keys)
    assert [(g.pattern, len(g.keys)) for g in groups] == [
        ("conv1.weight", 1),
        ("bn1.{weight,bias,running_mean,running_var,num_batches_tracked}", 5),
        ("layer{1,2}.{0..2}.conv{1,2}.{weight,bias}", 24),
        ("fc.{weight,bias}", 2),
    ]
    _assert_partition(keys, groups)


def test_group_keys_keep_first_seen_order() -> None:
    keys = _resnet_like()
    groups = group_keys(keys)
    assert groups[2].keys == tuple(k for k in keys if k.startswith("layer"))


def test_non_contiguous_numbers() -> None:
    keys = [f"blocks.{i}.attn.qkv.weight" for i in (0, 2, 5)]
    groups = group_keys(keys)
    assert [g.pattern for g in groups] == ["blocks.{0,2,5}.attn.qkv.weight"]
    _assert_partition(keys, groups)


def test_numbers_sort_numerically() -> None:
    keys = [f"blocks.{i}.w" for i in (10, 2, 0, 1)]
    groups = group_keys(keys)
    assert [g.pattern for g in groups] == ["blocks.{0,1,2,10}.w"]
    _assert_partition(keys, groups)


def test_an_incomplete_product_is_not_claimed() -> None:
    # a.x, a.y, b.x: "{a,b}.{x,y}" would claim b.y, which is not there.
    keys = ["a.x", "a.y", "b.x"]
    groups = group_keys(keys)
    assert [(g.pattern, g.keys) for g in groups] == [("a.{x,y}", ("a.x", "a.y")), ("b.x", ("b.x",))]
    _assert_partition(keys, groups)


def test_downsample_block_stays_apart() -> None:
    keys = _resnet_like()
    keys += ["layer2.0.downsample.0.weight"]
    keys += [f"layer2.0.downsample.1.{s}" for s in ("weight", "bias")]
    groups = group_keys(keys)
    patterns = [g.pattern for g in groups]
    assert "layer{1,2}.{0..2}.conv{1,2}.{weight,bias}" in patterns
    assert "layer2.0.downsample.0.weight" in patterns
    assert "layer2.0.downsample.1.{weight,bias}" in patterns
    _assert_partition(keys, groups)


def test_different_depths_never_merge() -> None:
    keys = ["head.weight", "head.fc.weight", "head.bias"]
    groups = group_keys(keys)
    assert [g.pattern for g in groups] == ["head.{weight,bias}", "head.fc.weight"]
    _assert_partition(keys, groups)


@pytest.mark.parametrize("keys", [[], ["only"]])
def test_trivial_inputs(keys: list[str]) -> None:
    groups = group_keys(keys)
    assert [g.pattern for g in groups] == keys
    _assert_partition(keys, groups)


def test_shared_affixes_are_factored_out_of_alternatives() -> None:
    keys = [f"embeddings.{n}_embeddings.weight" for n in ("word", "position", "token_type")]
    groups = group_keys(keys)
    assert [g.pattern for g in groups] == [
        "embeddings.{word,position,token_type}_embeddings.weight"
    ]
    _assert_partition(keys, groups)
