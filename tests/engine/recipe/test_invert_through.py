"""``graft recipe invert`` without ``--source``: a recipe that renames *and* merges and
transposes is reversed through its inverted renames, and the round trip is bit-exact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.errors import InvalidRecipeError
from app.engine.invert import invert_recipe
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target

FORWARD = {
    "rename": [
        {"regex": r"^encoder\.layer\.(\d+)\.", "to": r"blocks.\1."},
        {"prefix": "embeddings.", "to": "embed."},
    ],
    "merge": [{
        "from": [r"re:^blocks\.(\d+)\.attention\.self\.query\.(weight|bias)$",
                 r"blocks.\1.attention.self.key.\2", r"blocks.\1.attention.self.value.\2"],
        "to": r"blocks.\1.attn.qkv.\2", "dim": 0,
    }],
    "transform": [
        {"match": r"re:^blocks\.\d+\.output\.dense\.weight$", "op": "transpose"},
        {"match": "embed.word_embeddings.weight", "op": "transpose"},
    ],
    "strict": True,
}  # fmt: skip


def _source() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    out = {"embeddings.word_embeddings.weight": torch.randn(10, 4)}
    for i in range(2):
        for name in ("query", "key", "value"):
            out[f"encoder.layer.{i}.attention.self.{name}.weight"] = torch.randn(4, 4)
            out[f"encoder.layer.{i}.attention.self.{name}.bias"] = torch.randn(4)
        out[f"encoder.layer.{i}.output.dense.weight"] = torch.randn(6, 4)
    return out


def _skeleton(shapes: dict[str, tuple[int, ...]]) -> Target:
    tensors = {k: {"shape": list(v), "dtype": "float32"} for k, v in shapes.items()}
    return Target.from_skeleton({"schema": "graft.skeleton/v1", "tensors": tensors})


def test_renames_merge_and_transpose_invert_without_the_source_bit_exact(tmp_path: Path) -> None:
    source = _source()
    save_file(source, str(tmp_path / "src.safetensors"))
    forward_shapes = {"embed.word_embeddings.weight": (4, 10)}
    for i in range(2):
        forward_shapes[f"blocks.{i}.attn.qkv.weight"] = (12, 4)
        forward_shapes[f"blocks.{i}.attn.qkv.bias"] = (12,)
        forward_shapes[f"blocks.{i}.output.dense.weight"] = (4, 6)
    there = convert(tmp_path / "src.safetensors", _skeleton(forward_shapes),
                    load_recipe(FORWARD), output=tmp_path / "there.safetensors")  # fmt: skip
    assert there.ok, there.report.get("errors")

    inversion = invert_recipe(load_recipe(FORWARD))  # no source

    assert inversion.recipe["rename"] == [
        {"prefix": "embed.", "to": "embeddings."},
        {"regex": r"^blocks\.(\d+)\.", "to": r"encoder.layer.\1."},
    ]
    assert inversion.recipe["split"][0]["from"] == (
        r"re:^encoder\.layer\.(\d+)\.attn\.qkv\.(weight|bias)$"
    )
    assert [t["match"] for t in inversion.recipe["transform"]] == [
        "embeddings.word_embeddings.weight",
        r"re:^encoder\.layer\.(\d+)\.output\.dense\.weight$",
    ]
    back = convert(
        tmp_path / "there.safetensors",
        _skeleton({k: tuple(v.shape) for k, v in source.items()}),
        load_recipe(inversion.recipe),
        output=tmp_path / "back.safetensors",
    )
    assert back.ok, back.report.get("errors")
    out = load_file(str(tmp_path / "back.safetensors"))
    assert set(out) == set(source)
    assert all(torch.equal(out[k], v) for k, v in source.items())


def test_a_glob_transform_cannot_be_carried_through_renames_and_says_so() -> None:
    recipe = load_recipe({
        "rename": [{"prefix": "a.", "to": "b."}],
        "transform": [{"match": "b.*.weight", "op": "transpose"}],
    })  # fmt: skip

    with pytest.raises(InvalidRecipeError, match=r"a glob with wildcards cannot be carried"):
        invert_recipe(recipe)
