"""Recipe model, loading and validation: defaults, files, and errors that cite the rule."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.engine.errors import InvalidRecipeError
from app.engine.recipe import (
    AutoInit,
    ChannelsRule,
    InterpolateRule,
    KaimingNormalInit,
    KeyRule,
    PrefixRule,
    Recipe,
    RegexRule,
    ResizeRule,
    compile_pattern,
    compile_patterns,
    compile_regex,
    load_recipe,
    parse_replacement,
)

SPEC_YAML = r"""
version: 1
source:
  entry: auto
  strip_prefixes: auto
rename:
  - {prefix: "backbone.", to: "encoder."}
  - {regex: '^blocks\.(\d+)\.', to: 'layers.\1.'}
  - {key: "fc.weight", to: "head.weight"}
drop: ["fc.*"]
only: []
shape_mismatch: skip
adapt:
  - {match: "conv1.weight", op: channels, fill: repeat}
  - {match: "head.*", op: resize, fill: normal_like}
  - {match: "pos_embed", op: interpolate, prefix_tokens: 1}
missing: auto
init:
  - {match: "*", fn: auto}
dtype: keep
freeze: []
freeze_bn: false
strict: false
align: off
seed: 0
"""


def _error(data: Any) -> InvalidRecipeError:
    with pytest.raises(InvalidRecipeError) as info:
        load_recipe(data)
    return info.value


# --- defaults and loading ---------------------------------------------------------------------


def test_defaults_are_the_specs() -> None:
    recipe = load_recipe(None)

    assert recipe.model_dump(mode="json") == {
        "version": 1,
        "source": {"entry": "auto", "strip_prefixes": "auto"},
        "rename": [],
        "drop": [],
        "only": [],
        "split": [],
        "merge": [],
        "copy": [],
        "transform": [],
        "shape_mismatch": "skip",
        "adapt": [],
        "missing": "auto",
        "init": [{"match": "*", "fn": "auto"}],
        "dtype": "keep",
        "freeze": [],
        "freeze_bn": False,
        "strict": False,
        "align": "off",
        "align_min_confidence": 0.9,
        "unmatched": "error",
        "allow_empty": False,
        "seed": 0,
        "parity": "error",  # SPEC §3.2: a divergence refuses the conversion
        "parity_atol": 1e-5,
        "parity_rtol": 1e-4,
    }
    assert load_recipe({}) == recipe
    assert load_recipe(recipe) is recipe


def test_spec_example_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(SPEC_YAML)

    recipe = load_recipe(path)

    assert recipe.rename == [
        PrefixRule(prefix="backbone.", to="encoder."),
        RegexRule(regex=r"^blocks\.(\d+)\.", to=r"layers.\1."),
        KeyRule(key="fc.weight", to="head.weight"),
    ]
    assert recipe.adapt == [
        ChannelsRule(match="conv1.weight", op="channels", fill="repeat"),
        ResizeRule(match="head.*", op="resize", fill="normal_like"),
        InterpolateRule(match="pos_embed", op="interpolate", prefix_tokens=1, mode="bicubic"),
    ]
    assert recipe.drop == ["fc.*"]
    assert recipe.align == "off"  # YAML 1.1 reads a bare `off` as false
    assert recipe.init == [AutoInit(match="*", fn="auto")]


def test_json_file_and_str_path(tmp_path: Path) -> None:
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps({"version": 1, "drop": ["re:.*num_batches_tracked"], "seed": 7}))

    recipe = load_recipe(str(path))

    assert recipe.drop == ["re:.*num_batches_tracked"]
    assert recipe.seed == 7


def test_yml_suffix_and_empty_file_give_defaults(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yml"
    path.write_text("")

    assert load_recipe(path) == Recipe()


def test_null_fields_mean_the_default() -> None:
    recipe = load_recipe({"rename": None, "init": None, "source": {"entry": None}})

    assert recipe == Recipe()


def test_model_dump_round_trips() -> None:
    recipe = load_recipe(
        {
            "source": {"entry": "model.ema", "strip_prefixes": ["module.", "_orig_mod."]},
            "rename": [
                {"regex": r"^blocks\.(?P<n>\d+)\.", "to": r"layers.\g<n>."},
                {"prefix": "", "to": "model."},
            ],
            "adapt": [{"match": "head.*", "op": "resize"}],
            "init": [
                {"match": "re:.*conv.*", "fn": "kaiming_normal", "mode": "fan_in"},
                {"match": "*.bias", "fn": "zeros"},
                {"match": "*", "fn": "trunc_normal", "std": 0.01},
            ],
            "freeze": ["encoder.*"],
            "freeze_bn": True,
            "strict": True,
            "align": "suggest",
            "dtype": "bfloat16",
            "seed": 3,
        }
    )

    dumped = recipe.model_dump(mode="json")

    assert load_recipe(dumped) == recipe
    assert load_recipe(json.loads(json.dumps(dumped))).model_dump(mode="json") == dumped
    assert dumped["adapt"] == [{"match": "head.*", "op": "resize", "fill": "zeros"}]
    assert recipe.init[0] == KaimingNormalInit(
        match="re:.*conv.*", fn="kaiming_normal", a=0.0, mode="fan_in", nonlinearity="relu"
    )


def test_fill_defaults() -> None:
    recipe = load_recipe(
        {
            "adapt": [
                {"match": "a", "op": "channels"},
                {"match": "b", "op": "resize"},
                {"match": "c", "op": "interpolate"},
            ]
        }
    )

    assert recipe.adapt == [
        ChannelsRule(match="a", op="channels", fill="repeat"),
        ResizeRule(match="b", op="resize", fill="zeros"),
        InterpolateRule(match="c", op="interpolate", prefix_tokens=1, mode="bicubic"),
    ]


# --- files ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("recipe.yaml", "rename: [\n", "is not valid YAML"),
        ("recipe.json", "{", "is not valid JSON"),
        ("recipe.yaml", "drop: ['a']\ndrop: ['b']\n", "duplicate key 'drop'"),
        ("recipe.json", '{"drop": ["a"], "drop": ["b"]}', "duplicate key 'drop'"),
        # a python tag is refused as YAML, never constructed
        ("recipe.yaml", "seed: !!python/object/apply:os.getpid []\n", "is not valid YAML"),
    ],
    ids=["bad-yaml", "bad-json", "duplicate-yaml-key", "duplicate-json-key", "python-tag"],
)
def test_bad_recipe_file_is_refused(tmp_path: Path, name: str, text: str, match: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(InvalidRecipeError, match=match):
        load_recipe(path)


def test_missing_file_and_unknown_suffix(tmp_path: Path) -> None:
    with pytest.raises(InvalidRecipeError, match="cannot read recipe file"):
        load_recipe(tmp_path / "absent.yaml")
    with pytest.raises(InvalidRecipeError, match=r"must end in \.yaml, \.yml or \.json"):
        load_recipe(tmp_path / "recipe.toml")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text("- 1\n- 2\n")

    with pytest.raises(InvalidRecipeError, match="a recipe is a mapping"):
        load_recipe(path)


# --- validation errors cite the rule ----------------------------------------------------------


def test_unknown_top_level_field_suggests() -> None:
    error = _error({"renames": []})

    assert error.rule is None
    assert str(error).startswith("unknown field 'renames'; did you mean 'rename'?")


def test_unknown_field_in_a_rule() -> None:
    error = _error({"rename": [{"prefix": "a.", "to": "b."}, {"prefix": "a.", "too": "b."}]})

    assert error.rule == "rename[1]"
    assert "unknown field 'too'; did you mean 'to'? a prefix rule takes prefix, to" in str(error)


def test_version_must_be_1() -> None:
    for version in (2, "1", True):
        error = _error({"version": version})
        assert error.rule == "version"
        assert "this Graft reads version 1" in str(error)


def test_invalid_regex_names_the_rule() -> None:
    rules = [{"prefix": "a", "to": "b"}] * 3 + [{"regex": "blocks.(", "to": "x"}]

    with pytest.raises(InvalidRecipeError, match=r"^rename\[3\]: invalid regex 'blocks\.\('"):
        load_recipe({"rename": rules})


def test_lookaround_is_refused() -> None:
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: invalid regex .* RE2 syntax"):
        load_recipe({"rename": [{"regex": "fc(?=\\.)", "to": "x"}]})


def test_backreference_in_pattern_is_refused() -> None:
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: .*backreference \(\\1\)"):
        load_recipe({"rename": [{"regex": r"(\w+)\.\1", "to": "x"}]})
    with pytest.raises(InvalidRecipeError, match=r"drop\[0\]: .*named backreference"):
        load_recipe({"drop": ["re:(?P<a>x)(?P=a)"]})


def test_replacement_group_must_exist() -> None:
    error = _error({"rename": [{"regex": r"^blocks\.(\d+)\.", "to": r"layers.\2."}]})
    assert error.rule == "rename[0]"
    assert "refers to group \\2 but the regex has 1 capturing group(s)" in str(error)

    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: .*no group named 'm'"):
        load_recipe({"rename": [{"regex": r"(?P<n>\d)", "to": r"\g<m>"}]})
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: .*group \\1 .* 0 capturing"):
        load_recipe({"rename": [{"regex": "fc", "to": r"head\1"}]})


def test_unknown_escape_in_replacement() -> None:
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: `to` has an unknown escape"):
        load_recipe({"rename": [{"regex": "^fc", "to": r"head\.x"}]})


def test_rename_rule_needs_exactly_one_kind() -> None:
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: a rename rule needs one of"):
        load_recipe({"rename": [{"to": "x"}]})
    with pytest.raises(InvalidRecipeError, match=r"rename\[1\]: .*got prefix and regex"):
        load_recipe({"rename": [{"key": "a", "to": "b"}, {"prefix": "a", "regex": "b", "to": "c"}]})
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: a rename rule is a mapping"):
        load_recipe({"rename": ["backbone.->encoder."]})


def test_rename_rule_fields() -> None:
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: missing field 'to'"):
        load_recipe({"rename": [{"prefix": "a."}]})
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: to must not be empty"):
        load_recipe({"rename": [{"key": "fc.weight", "to": ""}]})
    with pytest.raises(InvalidRecipeError, match=r"rename\[0\]: to should be a string, got 1"):
        load_recipe({"rename": [{"prefix": "a.", "to": 1}]})


def test_unknown_op() -> None:
    error = _error({"adapt": [{"match": "x", "op": "foo"}]})

    assert error.rule == "adapt[0]"
    assert (
        str(error)
        == "adapt[0]: unknown op 'foo' (expected channels, resize, interpolate, kernel_resize)"
    )


def test_missing_op() -> None:
    with pytest.raises(InvalidRecipeError, match=r"adapt\[0\]: missing field 'op'"):
        load_recipe({"adapt": [{"match": "x"}]})


def test_unknown_fill() -> None:
    error = _error({"adapt": [{"match": "x", "op": "channels", "fill": "normal_like"}]})

    assert str(error) == (
        "adapt[0]: unknown fill 'normal_like' for op channels "
        "(expected zeros, random, mean, repeat)"
    )
    with pytest.raises(
        InvalidRecipeError, match=r"adapt\[1\]: unknown fill 'repeat' for op resize"
    ):
        load_recipe(
            {
                "adapt": [
                    {"match": "a", "op": "channels"},
                    {"match": "b", "op": "resize", "fill": "repeat"},
                ]
            }
        )


def test_interpolate_takes_no_fill() -> None:
    with pytest.raises(
        InvalidRecipeError, match=r"adapt\[0\]: unknown field 'fill'; op interpolate"
    ):
        load_recipe({"adapt": [{"match": "pos_embed", "op": "interpolate", "fill": "zeros"}]})
    with pytest.raises(
        InvalidRecipeError, match=r"adapt\[0\]: prefix_tokens should be >= 0, got -1"
    ):
        load_recipe({"adapt": [{"match": "pos_embed", "op": "interpolate", "prefix_tokens": -1}]})
    with pytest.raises(InvalidRecipeError, match=r"adapt\[0\]: unknown field 'prefix_tokens'"):
        load_recipe({"adapt": [{"match": "x", "op": "resize", "prefix_tokens": 1}]})


def test_init_rules() -> None:
    with pytest.raises(InvalidRecipeError, match=r"init\[0\]: unknown fn 'uniform'"):
        load_recipe({"init": [{"match": "*", "fn": "uniform"}]})
    with pytest.raises(InvalidRecipeError, match=r"init\[1\]: unknown field 'std'; fn zeros"):
        load_recipe(
            {"init": [{"match": "*.bias", "fn": "ones"}, {"match": "*", "fn": "zeros", "std": 1}]}
        )
    with pytest.raises(InvalidRecipeError, match=r"init\[0\]: std should be > 0"):
        load_recipe({"init": [{"match": "*", "fn": "normal", "std": 0}]})
    with pytest.raises(InvalidRecipeError, match=r"init\[0\]: trunc_normal needs a < b"):
        load_recipe({"init": [{"match": "*", "fn": "trunc_normal", "a": 3}]})
    with pytest.raises(InvalidRecipeError, match=r"init\[0\]: unknown mode 'fan_avg'"):
        load_recipe({"init": [{"match": "*", "fn": "kaiming_normal", "mode": "fan_avg"}]})


def test_bad_patterns_cite_their_index() -> None:
    with pytest.raises(InvalidRecipeError, match=r"^drop\[1\]: invalid regex '\('"):
        load_recipe({"drop": ["fc.*", "re:("]})
    with pytest.raises(InvalidRecipeError, match=r"^only\[0\]: empty pattern"):
        load_recipe({"only": [""]})
    with pytest.raises(InvalidRecipeError, match=r"^freeze\[0\]: invalid glob '\[z-a\]'"):
        load_recipe({"freeze": ["[z-a]"]})
    with pytest.raises(InvalidRecipeError, match=r"^adapt\[0\]: invalid regex"):
        load_recipe({"adapt": [{"match": "re:[", "op": "resize"}]})
    with pytest.raises(InvalidRecipeError, match=r"^init\[0\]: empty regex"):
        load_recipe({"init": [{"match": "re:", "fn": "auto"}]})


def test_limits() -> None:
    with pytest.raises(InvalidRecipeError, match=r"^drop: has 1001 entries; at most 1000"):
        load_recipe({"drop": ["x"] * 1001})
    with pytest.raises(InvalidRecipeError, match=r"^drop\[0\]: pattern is 1001 characters"):
        load_recipe({"drop": ["x" * 1001]})
    with pytest.raises(InvalidRecipeError, match=r"^rename\[0\]: regex is 1001 characters"):
        load_recipe({"rename": [{"regex": "x" * 1001, "to": "y"}]})


def test_scalar_fields() -> None:
    error = _error({"dtype": "float8"})
    assert error.rule == "dtype"
    assert str(error) == "dtype: unknown value 'float8' (expected keep, float32, float16, bfloat16)"

    with pytest.raises(InvalidRecipeError, match=r"^seed: value should be an integer, got '1'"):
        load_recipe({"seed": "1"})
    with pytest.raises(InvalidRecipeError, match=r"^strict: value should be true or false"):
        load_recipe({"strict": "yes"})
    with pytest.raises(InvalidRecipeError, match=r"^missing: unknown value 'fill'"):
        load_recipe({"missing": "fill"})
    with pytest.raises(InvalidRecipeError, match=r"^source.strip_prefixes: .*write \['module\.'\]"):
        load_recipe({"source": {"strip_prefixes": "module."}})
    with pytest.raises(InvalidRecipeError, match=r"^source: unknown field 'entri'; did you mean"):
        load_recipe({"source": {"entri": "model"}})
    with pytest.raises(InvalidRecipeError, match=r"^source.entry: .*empty path segment"):
        load_recipe({"source": {"entry": "model..ema"}})


def test_several_errors_in_one_message() -> None:
    error = _error({"dtype": "x", "adapt": [{"match": "a", "op": "foo"}]})

    assert error.rule == "adapt[0]"  # fields are checked in SPEC order
    assert str(error) == (
        "adapt[0]: unknown op 'foo' (expected channels, resize, interpolate, kernel_resize); "
        "dtype: unknown value 'x' (expected keep, float32, float16, bfloat16)"
    )


# --- patterns ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "expected"),
    [
        ("fc.*", "fc.weight", True),
        ("fc.*", "fcx", False),  # the dot is literal
        ("layer1.*", "layer1.0.conv1.weight", True),  # * crosses dots
        ("*.bias", "head.fc.bias", True),
        ("head", "head.weight", False),  # whole key
        ("conv?.weight", "conv1.weight", True),
        ("conv[12].weight", "conv3.weight", False),
        ("conv[!12].weight", "conv3.weight", True),
        ("a[bc", "a[bc", True),  # unclosed [ is literal
        ("re:fc\\..*", "fc.weight", True),
        ("re:fc", "fc.weight", False),  # full match, like the glob
        ("re:.*running_(mean|var)", "bn1.running_var", True),
    ],
)
def test_compile_pattern(pattern: str, key: str, expected: bool) -> None:
    assert compile_pattern(pattern).matches(key) is expected


def test_compile_patterns_cites() -> None:
    matchers = compile_patterns(["a", "b"], section="freeze")

    assert [m.rule for m in matchers] == ["freeze[0]", "freeze[1]"]
    with pytest.raises(InvalidRecipeError, match=r"^drop\[1\]: invalid regex"):
        compile_patterns(["a", "re:("], section="drop")


def test_compile_regex_and_replacement() -> None:
    regex = compile_regex(r"^(?P<name>\w+)\.(\d)")

    assert parse_replacement(r"x.\g<name>.\2\\", regex) == ("x.", 1, ".", 2, "\\")
    with pytest.raises(InvalidRecipeError, match=r"^rename\[4\]: .*backreference"):
        compile_regex(r"(a)\1", rule="rename[4]")


def test_a_regex_in_double_quotes_gets_a_hint_about_yaml_escapes(tmp_path: Path) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text('version: 1\nrename:\n  - {regex: "^blocks\\.(\\d+)", to: "layers"}\n')
    with pytest.raises(InvalidRecipeError, match=r"not valid YAML.*write regexes in single quotes"):
        load_recipe(path)


def test_interpolate_and_kernel_resize_rules() -> None:
    recipe = load_recipe(
        {
            "adapt": [
                {"match": "pos_embed", "op": "interpolate", "grid": [12, 16],
                 "prefix_tokens": {"source": 1, "target": 5}, "antialias": False},
                {"match": "patch_embed.proj.weight", "op": "kernel_resize", "mode": "bilinear"},
            ]
        }
    )  # fmt: skip
    interpolate, kernel = recipe.adapt
    assert interpolate.options() == {
        "prefix_tokens": {"source": 1, "target": 5}, "mode": "bicubic", "antialias": False,
        "grid": [12, 16], "source_grid": None,
    }  # fmt: skip
    assert kernel.options() == {"mode": "bilinear", "antialias": True}
    assert load_recipe({"adapt": [{"match": "p", "op": "interpolate"}]}).adapt[0].options() == {
        "prefix_tokens": 1, "mode": "bicubic", "antialias": True, "grid": None,
        "source_grid": None,
    }  # fmt: skip
    with pytest.raises(InvalidRecipeError, match=r"^adapt\[0\]: grid: List should have at least 2"):
        load_recipe({"adapt": [{"match": "p", "op": "interpolate", "grid": [14]}]})
    with pytest.raises(InvalidRecipeError, match=r"^adapt\[0\]: prefix_tokens is a count or \{so"):
        load_recipe({"adapt": [{"match": "p", "op": "interpolate", "prefix_tokens": {"n": 1}}]})
    with pytest.raises(InvalidRecipeError, match=r"^adapt\[0\]: unknown field 'fill'"):
        load_recipe({"adapt": [{"match": "p", "op": "kernel_resize", "fill": "zeros"}]})


def test_trunc_normal_bounds_default_to_two_std_and_are_checked() -> None:
    (rule,) = load_recipe({"init": [{"match": "*", "fn": "trunc_normal", "std": 0.1}]}).init
    assert rule.model_dump(exclude_none=True) == {
        "match": "*", "fn": "trunc_normal", "mean": 0.0, "std": 0.1,
    }  # fmt: skip
    with pytest.raises(InvalidRecipeError, match=r"trunc_normal needs a < b, got a=1.0, b=0.2"):
        load_recipe({"init": [{"match": "*", "fn": "trunc_normal", "std": 0.1, "a": 1.0}]})
