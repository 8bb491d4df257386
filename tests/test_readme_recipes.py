"""Every YAML recipe the README shows loads as written."""

from __future__ import annotations

import re

import yaml

from app.engine.recipe import load_recipe
from tests.fixtures import REPO_ROOT


def test_every_readme_recipe_loads() -> None:
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    recipes = [yaml.safe_load(b) for b in blocks]
    assert len(recipes) >= 3
    for recipe in recipes:
        load_recipe(recipe)
    fused = next(r for r in recipes if "split" in r)
    parsed = load_recipe(fused)
    assert parsed.split[0].to == [
        r"layers.\1.attn.q.\2",
        r"layers.\1.attn.k.\2",
        r"layers.\1.attn.v.\2",
    ]
    gpt2 = load_recipe(next(r for r in recipes if "copy" in r))
    assert [t.op for t in gpt2.transform] == ["transpose"]
