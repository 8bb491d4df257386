"""``invert_recipe``: each invertible kind of rule, refusals by name, and forward-then-back
round trips that are bit-exact on tiny real modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from app.engine.errors import InvalidRecipeError
from app.engine.invert import invert_recipe
from app.engine.readers import open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.engine._models import run, save_sd, save_st, skeleton_of
from tests.engine.test_tensor_rules import SPLIT_QKV, FusedNet, SplitNet

QKV_SPLIT = {"split": SPLIT_QKV["split"], "strict": True}


def test_split_and_merge_invert_into_each_other() -> None:
    back = invert_recipe(load_recipe(QKV_SPLIT)).recipe
    assert back == {
        "version": 1,
        "merge": [
            {
                "from": [
                    r"re:layers\.(\d+)\.q\.(weight|bias)",
                    r"layers.\1.k.\2",
                    r"layers.\1.v.\2",
                ],
                "to": r"blocks.\1.attn.qkv.\2",
                "dim": 0,
            }
        ],
        "strict": True,
    }
    assert invert_recipe(load_recipe(back)).recipe == {
        "version": 1,
        "split": [{**SPLIT_QKV["split"][0], "dim": 0}],
        "strict": True,
    }


def test_regex_groups_are_renumbered_in_the_order_to_uses_them() -> None:
    recipe = load_recipe({"rename": [{"regex": r"^a\.(\d+)\.b\.(\w+)$", "to": r"x.\2.y.\1"}]})
    assert invert_recipe(recipe).recipe["rename"] == [
        {"regex": r"^x\.(\w+)\.y\.(\d+)$", "to": r"a.\2.b.\1"}
    ]


@pytest.mark.parametrize(
    ("recipe", "rule", "message"),
    [
        ({"copy": [{"from": "a", "to": "b"}]}, "copy[0]", "copy rules cannot be inverted"),
        ({"adapt": [{"match": "a", "op": "resize"}]}, "adapt[0]", "adapt rules cannot be"),
        ({"init": [{"match": "*", "fn": "zeros"}]}, "init[0]", "init rules cannot be inverted"),
        ({"dtype": "float16"}, "dtype", "a dtype cast cannot be inverted bit-exactly"),
        ({"rename": [{"regex": r"^a\.\d+", "to": "b"}]}, "rename[0]", "outside its groups"),
        ({"rename": [{"regex": r"^(a|b)\.(\d+)", "to": r"\2"}]}, "rename[0]", "exactly once"),
        (
            {"transform": [{"match": "w", "op": "reshape", "shape": [4]}]},
            "transform[0]",
            "--source",
        ),
        (
            {
                **QKV_SPLIT,
                "rename": [{"prefix": "x.", "to": "blocks."}],
                "transform": [{"match": "blocks.*.proj.weight", "op": "transpose"}],
            },
            "transform[0]",
            "a glob with wildcards cannot be carried through the renames",
        ),
    ],
)
def test_what_cannot_be_inverted_is_refused_by_name(recipe: dict, rule: str, message: str) -> None:
    with pytest.raises(InvalidRecipeError, match=message) as caught:
        invert_recipe(load_recipe(recipe))
    assert caught.value.rule == rule


def _same(path: Path, expected: dict[str, torch.Tensor]) -> None:
    with open_source(path) as source:
        assert set(source.tensors) == set(expected)
        for key, value in expected.items():
            got = source.read(key)
            assert got.dtype == value.dtype and torch.equal(got, value), key


class Halves(SplitNet):
    """q/k/v, and proj cut in two halves: ``layers.N.proj`` and ``rest.N``."""

    def __init__(self) -> None:
        super().__init__()
        for layer in self.layers:
            layer.proj = nn.Linear(8, 4)
        self.rest = nn.ModuleList([nn.Linear(8, 4) for _ in range(2)])


def test_split_then_merge_back_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(5)
    sd = {k: v.clone() for k, v in FusedNet().state_dict().items()}
    src = save_sd(sd, tmp_path / "fused.pt")
    halves = {
        "from": r"re:blocks\.(\d+)\.attn\.proj\.(weight|bias)",
        "to": [r"layers.\1.proj.\2", r"rest.\1.\2"],
    }
    recipe = {"split": [*QKV_SPLIT["split"], halves], "strict": True}

    there, _ = run(src, skeleton_of(Halves()), recipe, tmp_path / "split.safetensors")
    assert there.ok, there.report.get("errors")
    assert there.report["summary"]["loaded"] == 20

    back = invert_recipe(load_recipe(recipe), source=_tensors(src)).recipe
    assert [m["to"] for m in back["merge"]] == [r"blocks.\1.attn.qkv.\2", r"blocks.\1.attn.proj.\2"]
    result, _ = run(
        tmp_path / "split.safetensors",
        Target.from_checkpoint(save_st(sd, tmp_path / "fused-template.safetensors")),
        back,
        tmp_path / "again.safetensors",
    )
    assert result.ok, result.report.get("errors")
    assert (result.report["summary"]["loaded"], result.report["summary"]["used"]) == (8, 20)
    _same(tmp_path / "again.safetensors", sd)


def _tensors(path: Path) -> dict:
    with open_source(path) as source:
        return dict(source.tensors)


def test_transpose_and_reshape_there_and_back_is_bit_exact(tmp_path: Path) -> None:
    torch.manual_seed(6)
    sd = {"c_attn.weight": torch.randn(8, 24), "proj.weight": torch.randn(8, 8), "b": torch.ones(3)}
    src = save_st(sd, tmp_path / "gpt.safetensors")
    recipe = {
        "transform": [
            {"match": "c_attn.weight", "op": "transpose"},
            {"match": "proj.weight", "op": "transpose"},
            {"match": "proj.weight", "op": "reshape", "shape": [8, 8, 1, 1]},
        ],
        "strict": True,
    }
    there_template = {
        "c_attn.weight": torch.zeros(24, 8), "proj.weight": torch.zeros(8, 8, 1, 1),
        "b": torch.zeros(3),
    }  # fmt: skip
    there, _ = run(
        src,
        Target.from_checkpoint(save_st(there_template, tmp_path / "t.safetensors")),
        recipe,
        tmp_path / "there.safetensors",
    )
    assert there.ok, there.report.get("errors")

    back = invert_recipe(load_recipe(recipe), source=_tensors(src)).recipe

    assert back["transform"] == [
        {"match": "proj.weight", "op": "reshape", "shape": [8, 8]},
        {"match": "proj.weight", "op": "transpose"},
        {"match": "c_attn.weight", "op": "transpose"},
    ]
    result, _ = run(
        tmp_path / "there.safetensors",
        Target.from_checkpoint(src),
        back,
        tmp_path / "again.safetensors",
    )
    assert result.ok, result.report.get("errors")
    _same(tmp_path / "again.safetensors", sd)


class Wide(SplitNet):
    """q, k, v; proj stored as a 1x1 conv."""

    def __init__(self) -> None:
        super().__init__()
        for layer in self.layers:
            layer.proj = nn.Conv2d(8, 8, 1)


def test_rename_split_and_transform_reverse_key_by_key_bit_exact(tmp_path: Path) -> None:
    """The README's fused-qkv recipe plus a transpose and a reshape: the reverse cannot be
    written rule by rule, so with the source it is written key by key, and round trips."""
    torch.manual_seed(7)
    sd = {k: v.clone() for k, v in FusedNet().state_dict().items()}
    src = save_sd(sd, tmp_path / "fused.pt")
    recipe = {
        "rename": [{"regex": r"^blocks\.(\d+)\.attn\.", "to": r"layers.\1."}],
        "split": [
            {
                "from": r"re:layers\.(\d+)\.qkv\.(weight|bias)",
                "to": [r"layers.\1.q.\2", r"layers.\1.k.\2", r"layers.\1.v.\2"],
            }
        ],
        "transform": [
            {"match": "*.proj.weight", "op": "transpose"},
            {"match": "*.proj.weight", "op": "reshape", "shape": [8, 8, 1, 1]},
        ],
        "strict": True,
    }
    there, _ = run(src, skeleton_of(Wide()), recipe, tmp_path / "there.safetensors")
    assert there.ok, there.report.get("errors")

    with pytest.raises(InvalidRecipeError, match="give --source") as caught:
        invert_recipe(load_recipe(recipe))
    assert caught.value.rule == "transform[1]"  # the reshape needs the shape it started from
    inversion = invert_recipe(load_recipe(recipe), source=_tensors(src))

    back = inversion.recipe
    assert inversion.notes[0].startswith("proved: the renames map the source's 8 keys")
    assert back["rename"] == [
        {"key": f"layers.{i}.proj.{leaf}", "to": f"blocks.{i}.attn.proj.{leaf}"}
        for i in range(2)
        for leaf in ("weight", "bias")
    ]
    assert back["merge"][0] == {
        "from": ["layers.0.q.weight", "layers.0.k.weight", "layers.0.v.weight"],
        "to": "blocks.0.attn.qkv.weight",
        "dim": 0,
    }
    assert back["transform"][:2] == [
        {"match": "blocks.0.attn.proj.weight", "op": "reshape", "shape": [8, 8]},
        {"match": "blocks.0.attn.proj.weight", "op": "transpose"},
    ]
    result, _ = run(
        tmp_path / "there.safetensors",
        Target.from_checkpoint(save_st(sd, tmp_path / "fused-template.safetensors")),
        back,
        tmp_path / "again.safetensors",
    )
    assert result.ok, result.report.get("errors")
    _same(tmp_path / "again.safetensors", sd)


def test_transform_of_a_split_key_cannot_be_reversed(tmp_path: Path) -> None:
    torch.manual_seed(8)
    src = save_sd(FusedNet().state_dict(), tmp_path / "fused.pt")
    recipe = {**QKV_SPLIT, "transform": [{"match": "*.q.weight", "op": "transpose"}]}
    with pytest.raises(InvalidRecipeError, match="which a split or merge makes") as caught:
        invert_recipe(load_recipe(recipe), source=_tensors(src))
    assert caught.value.rule == "transform[0]"
