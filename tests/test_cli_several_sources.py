"""``graft plan``/``convert`` with several sources: ``NAME=PATH`` arguments, the recipe's
``sources`` (paths relative to the recipe), and the refusals (exit 2) that name what is wrong."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from tests.engine.test_several_sources import save_gpt2
from tests.test_cli_convert import graft_process

RECIPE = {
    "sources": {"a": "gpt2-a", "b": {"path": "gpt2-b"}},
    "slices": [{"from": "a", "layers": [0, 2]}, {"from": "b", "layers": [2, 4]}],
    "rename": [{"prefix": "a:", "to": ""}],
    "drop": ["b:*"],
    "strict": True,
}


def test_sources_from_the_recipe_or_the_command_line(tmp_path: Path) -> None:
    save_gpt2(1, tmp_path / "gpt2-a")
    save_gpt2(2, tmp_path / "gpt2-b")
    recipe = tmp_path / "stack.json"
    recipe.write_text(json.dumps(RECIPE))
    target = tmp_path / "gpt2-a" / "model.safetensors"
    # No source: the recipe's paths, relative to the recipe file (not to the working folder).
    from_recipe = graft_process("plan", target, "-r", recipe, "--json")
    assert from_recipe.returncode == 0, from_recipe.stderr
    report = json.loads(from_recipe.stdout)
    assert [s["name"] for s in report["source"]] == ["a", "b"]
    assert report["ok"] and report["summary"]["used"] == len(report["entries"])
    # NAME=PATH wins over the recipe's path for that name: b is a here, so layers 2-3 are a's.
    out = tmp_path / "out.safetensors"
    swapped = graft_process(
        "convert", f"b={tmp_path / 'gpt2-a'}", target, "-r", recipe, "-o", out, "--no-verify"
    )
    assert swapped.returncode == 0, swapped.stderr
    a = load_file(target)
    got = load_file(out)
    assert torch.equal(
        got["transformer.h.2.attn.c_attn.weight"], a["transformer.h.2.attn.c_attn.weight"]
    )


def test_refusals_name_the_missing_or_mixed_sources(tmp_path: Path) -> None:
    save_gpt2(1, tmp_path / "gpt2-a")
    recipe = tmp_path / "stack.json"
    recipe.write_text(json.dumps({**RECIPE, "sources": {"a": "gpt2-a", "b": {}}}))
    target = tmp_path / "gpt2-a" / "model.safetensors"
    lacking = graft_process("plan", target, "-r", recipe)
    assert lacking.returncode == 2
    assert "no path for source 'b'" in lacking.stderr
    mixed = graft_process("plan", tmp_path / "gpt2-a", f"b={tmp_path}", target, "-r", recipe)
    assert mixed.returncode == 2
    assert "every source as NAME=PATH" in mixed.stderr
