"""Rename rules applied to real key lists, and drop/only filtering."""

from __future__ import annotations

from typing import Any

import pytest

from app.engine.errors import InvalidRecipeError
from app.engine.recipe import RenameRule, load_recipe
from app.engine.recipe.rename import Renamed, apply_renames, filter_keys


def _rules(*rules: dict[str, Any]) -> list[RenameRule]:
    return load_recipe({"rename": list(rules)}).rename


def test_no_rules_keeps_keys() -> None:
    assert apply_renames(["a", "b"], []) == {
        "a": Renamed("a", "a", ()),
        "b": Renamed("b", "b", ()),
    }


def test_ordered_regex_rules_rewrite_previous_output() -> None:
    rules = _rules(
        {"regex": r"^blocks\.(\d+)\.", "to": r"layers.\1."},
        {"regex": r"\.norm(\d)", "to": r".bn\1"},
    )
    keys = ["blocks.0.norm1.weight", "blocks.11.attn.norm2.norm3.bias", "norm1.weight", "cls"]

    renamed = apply_renames(keys, rules)

    assert list(renamed) == keys  # input order
    assert renamed["blocks.0.norm1.weight"] == Renamed(
        "blocks.0.norm1.weight", "layers.0.bn1.weight", ("rename[0]", "rename[1]")
    )
    # every match is replaced, not only the first
    assert renamed["blocks.11.attn.norm2.norm3.bias"].key == "layers.11.attn.bn2.bn3.bias"
    assert renamed["norm1.weight"] == Renamed("norm1.weight", "norm1.weight", ())
    assert renamed["cls"].rules == ()


def test_second_rule_sees_first_rules_output() -> None:
    rules = _rules(
        {"prefix": "backbone.", "to": "encoder."}, {"regex": r"^encoder\.", "to": "enc."}
    )

    renamed = apply_renames(["backbone.conv.weight"], rules)

    assert renamed["backbone.conv.weight"] == Renamed(
        "backbone.conv.weight", "enc.conv.weight", ("rename[0]", "rename[1]")
    )


def test_prefix_rule() -> None:
    rules = _rules({"prefix": "backbone.", "to": "encoder."})

    renamed = apply_renames(["backbone.conv1.weight", "head.backbone.x"], rules)

    assert renamed["backbone.conv1.weight"] == Renamed(
        "backbone.conv1.weight", "encoder.conv1.weight", ("rename[0]",)
    )
    assert renamed["head.backbone.x"] == Renamed("head.backbone.x", "head.backbone.x", ())


def test_prefix_rule_strips_and_adds() -> None:
    strip = _rules({"prefix": "module.", "to": ""})
    add = _rules({"prefix": "", "to": "model."})

    assert apply_renames(["module.fc.weight"], strip)["module.fc.weight"].key == "fc.weight"
    assert apply_renames(["fc.weight"], add)["fc.weight"].key == "model.fc.weight"


def test_exact_key_rule() -> None:
    rules = _rules({"prefix": "x.", "to": "y."}, {"key": "fc.weight", "to": "head.weight"})

    renamed = apply_renames(["fc.weight", "fc.weight2", "fc.bias"], rules)

    assert renamed["fc.weight"] == Renamed("fc.weight", "head.weight", ("rename[1]",))
    assert renamed["fc.weight2"].key == "fc.weight2"
    assert renamed["fc.bias"].key == "fc.bias"


def test_named_group_and_unmatched_group() -> None:
    rules = _rules({"regex": r"^(?P<n>\d+)(x)?\.", "to": r"l\g<n>\2."})

    assert apply_renames(["3.w"], rules)["3.w"].key == "l3.w"


def test_collision_names_both_keys_and_the_rule() -> None:
    rules = _rules({"prefix": "a.", "to": "b."}, {"regex": r"^(?:b|c)\.", "to": "d."})

    with pytest.raises(InvalidRecipeError, match=r"rename\[1\]") as info:
        apply_renames(["a.w", "c.w"], rules)

    assert info.value.rule == "rename[1]"
    assert str(info.value).startswith("rename[1]: renames both 'a.w' and 'c.w' to 'd.w'")


def test_collision_with_an_untouched_key() -> None:
    rules = _rules({"key": "fc.weight", "to": "head.weight"})

    with pytest.raises(
        InvalidRecipeError,
        match=r"^rename\[0\]: renames 'fc.weight' to 'head.weight', which source key "
        r"'head.weight' already maps to",
    ):
        apply_renames(["head.weight", "fc.weight"], rules)


def test_collision_is_checked_against_real_keys_only() -> None:
    rules = _rules({"key": "fc.weight", "to": "head.weight"})

    renamed = apply_renames(["fc.weight", "fc.bias"], rules)

    assert renamed["fc.weight"].key == "head.weight"


def test_key_moving_into_a_name_another_key_leaves() -> None:
    rules = _rules({"prefix": "a.", "to": "a.a."})

    renamed = apply_renames(["a.x", "a.a.x"], rules)

    assert [r.key for r in renamed.values()] == ["a.a.x", "a.a.a.x"]


def test_empty_key() -> None:
    rules = _rules({"prefix": "x.", "to": "y."}, {"regex": r"^fc\.weight$", "to": ""})

    with pytest.raises(
        InvalidRecipeError, match=r"^rename\[1\]: turns 'fc.weight' into an empty key"
    ):
        apply_renames(["fc.weight"], rules)


# --- filter_keys ------------------------------------------------------------------------------


def test_drop_glob_and_regex() -> None:
    keys = ["fc.weight", "fc.bias", "conv.weight", "bn.running_mean", "bn.weight"]

    kept, dropped = filter_keys(keys, drop=["fc.*", "re:.*running_(mean|var)"])

    assert kept == ["conv.weight", "bn.weight"]
    assert dropped == {"fc.weight": "drop[0]", "fc.bias": "drop[0]", "bn.running_mean": "drop[1]"}


def test_first_drop_rule_is_cited() -> None:
    _, dropped = filter_keys(["fc.weight"], drop=["re:fc\\..*", "*.weight"])

    assert dropped == {"fc.weight": "drop[0]"}


def test_only() -> None:
    keys = ["encoder.a", "encoder.b", "head.w", "fc.w"]

    kept, dropped = filter_keys(keys, drop=["fc.*"], only=["encoder.*", "fc.*"])

    assert kept == ["encoder.a", "encoder.b"]
    assert dropped == {"head.w": "only", "fc.w": "drop[0]"}  # drop applies first


def test_no_filters_keep_everything() -> None:
    assert filter_keys(["b", "a"]) == (["b", "a"], {})


def test_bad_pattern_is_cited() -> None:
    with pytest.raises(InvalidRecipeError, match=r"^only\[1\]: invalid regex"):
        filter_keys(["a"], only=["a", "re:("])
