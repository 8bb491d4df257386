"""``graft align`` writes a recipe that ``graft convert`` applies as it is; ``graft recipes``
lists the built-ins; ``-r builtin:NAME`` uses one. Real processes, real files."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import load_file, save_file

from app.zoo.resnet import ResNet
from bench.align_pairs import PAIRS
from tests.test_cli_convert import graft_process


def _detectron2_skeleton(path: Path) -> Path:
    pair = PAIRS["resnet18-detectron2"]()
    tensors = {
        k: {"shape": list(v.shape), "dtype": "float32",
            "kind": "buffer" if "running" in k or "batches" in k else "parameter"}
        for k, v in pair.target.items()
    }  # fmt: skip
    for k in tensors:
        if k.endswith("num_batches_tracked"):
            tensors[k]["dtype"] = "int64"
    path.write_text(json.dumps({"schema": "graft.skeleton/v1", "tensors": tensors}))
    return path


def test_align_writes_a_recipe_that_convert_applies_as_it_is(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = {k: v.clone() for k, v in ResNet(depth=18).state_dict().items()}
    source = tmp_path / "resnet18.pth"  # torch.save keeps the module order (safetensors sorts)
    torch.save(weights, source)
    skeleton = _detectron2_skeleton(tmp_path / "detectron2.json")
    recipe = tmp_path / "recipe.yaml"

    aligned = graft_process("align", source, skeleton, "-o", recipe)

    assert aligned.returncode == 0, aligned.stderr
    assert "graft: 122 of 122 target keys fed; 0 unresolved" in aligned.stderr
    text = recipe.read_text()
    assert "# confidence" in text and "strict: true" in text
    assert len(yaml.safe_load(text)["rename"]) < 40
    out = tmp_path / "out.safetensors"
    converted = graft_process("convert", source, skeleton, "-r", recipe, "-o", out)
    assert converted.returncode == 0, converted.stderr
    written = load_file(str(out))
    assert torch.equal(written["res3.0.shortcut.norm.running_var"],
                       weights["layer2.0.downsample.1.running_var"])  # fmt: skip
    assert torch.equal(written["res5.1.conv2.weight"], weights["layer4.1.conv2.weight"])


def test_align_exits_1_and_lists_ties_when_keys_stay_unresolved(tmp_path: Path) -> None:
    pair = PAIRS["ambiguous"]()
    source = tmp_path / "src.safetensors"
    save_file({k: torch.zeros(v.shape) for k, v in pair.source.items()}, str(source))
    skeleton = tmp_path / "target.json"
    skeleton.write_text(
        json.dumps(
            {
                "schema": "graft.skeleton/v1",
                "tensors": {
                    k: {"shape": list(v.shape), "dtype": "float32"} for k, v in pair.target.items()
                },
            }
        )
    )
    recipe = tmp_path / "recipe.json"

    run = graft_process("align", source, skeleton, "-o", recipe, "--json")

    assert run.returncode == 1, run.stderr
    assert "  ? tail.left.weight TIE <- " in run.stderr
    document = json.loads(run.stdout)
    assert {u["target"] for u in document["unresolved"]} == {
        "tail.left.weight",
        "tail.right.weight",
    }
    written = json.loads(recipe.read_text())
    assert written["strict"] is True and written["rename"][0]["x-confidence"] >= 0.9
    assert {u["target"] for u in written["x-unresolved"]} == {
        "tail.left.weight",
        "tail.right.weight",
    }


def test_recipes_lists_the_builtins_and_convert_takes_one(tmp_path: Path) -> None:
    listed = graft_process("recipes", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "torchvision-resnet-to-timm" in {b["name"] for b in json.loads(listed.stdout)}

    torch.manual_seed(0)
    source = tmp_path / "resnet18.safetensors"
    save_file(ResNet(depth=18).state_dict(), str(source))
    run = graft_process(
        "convert", source, "arch:graft_resnet", "--target-kwargs", '{"depth": 18}',
        "-r", "builtin:torchvision-resnet-to-timm", "-o", tmp_path / "out.safetensors",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    missing = graft_process("plan", source, "arch:graft_resnet", "-r", "builtin:nope")
    assert missing.returncode != 0
    assert "no built-in recipe 'nope'; the built-ins are: " in missing.stderr
