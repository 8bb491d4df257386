"""The recipe's ``lora`` step: a PEFT adapter merged into its base source during a conversion
equals PEFT's own ``merge_and_unload`` (within its float32 rounding), and ``graft lora merge``
bit for bit; the entries it changed cite ``lora``."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.engine.errors import InvalidRecipeError
from app.engine.lora import apply_lora, read_adapter
from app.engine.pipeline import convert
from app.engine.readers import NamedSources
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.engine.test_lora import _assert_close_to_peft
from tests.parts import import_part

transformers: Any = import_part("transformers", "transformers", "make setup installs it")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    peft: Any = import_part("peft", "peft", "make setup installs it (dev extra)")

MERGE = {
    "sources": {"base": {}, "adapter": {}},
    "lora": {"merge": "adapter"},
    "rename": [{"prefix": "base:", "to": ""}],
    "strict": True,
}


def bert_with_adapter(folder: Path, *, saved: bool = True) -> dict[str, torch.Tensor]:
    """A tiny BERT saved as transformers does, and a PEFT adapter (non-zero B; with ``saved``,
    ``modules_to_save`` too) saved beside; returns PEFT's merge_and_unload state dict."""
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=24,
    )  # fmt: skip
    model = transformers.BertModel(config).eval()
    model.save_pretrained(folder / "bert")
    lora = peft.LoraConfig(
        init_lora_weights=False, r=4, lora_alpha=8, target_modules=["query", "value", "dense"],
        rank_pattern={"query": 2}, modules_to_save=["pooler.dense"] if saved else None,
    )  # fmt: skip
    torch.manual_seed(1)
    wrapped = peft.get_peft_model(model, lora)
    if saved:
        with torch.no_grad():
            wrapped.base_model.model.pooler.dense.modules_to_save["default"].weight.add_(1.0)
    wrapped.save_pretrained(folder / "adapter")
    merged: dict[str, torch.Tensor] = wrapped.merge_and_unload().state_dict()
    return merged


def test_a_lora_step_merges_as_peft_and_graft_lora_do(tmp_path: Path) -> None:
    merged = bert_with_adapter(tmp_path)
    sources = NamedSources({"base": tmp_path / "bert", "adapter": tmp_path / "adapter"})
    out = tmp_path / "merged.safetensors"
    result = convert(
        sources,
        Target.from_checkpoint(tmp_path / "bert" / "model.safetensors"),
        load_recipe(MERGE),
        output=out,
    )
    assert result.ok, result.report.get("errors")
    ours = load_file(out)
    _assert_close_to_peft(ours, merged)
    # The same arithmetic as `graft lora merge`: bit for bit.
    cli = tmp_path / "cli.safetensors"
    apply_lora(tmp_path / "bert" / "model.safetensors", read_adapter(tmp_path / "adapter"), cli)
    for key, value in load_file(cli).items():
        assert torch.equal(ours[key], value), key
    entries = {e["target"]: e for e in result.report["entries"]}
    assert entries["encoder.layer.0.attention.self.query.weight"]["rules"] == ["lora", "rename[0]"]
    assert entries["pooler.dense.weight"]["rules"] == ["lora", "rename[0]"]  # modules_to_save
    assert entries["encoder.layer.0.attention.self.query.bias"]["rules"] == ["rename[0]"]
    assert [s["name"] for s in result.report["source"]] == ["base", "adapter"]
    lora = next(r for r in result.report["rules"] if r["rule"] == "lora")
    # query and value, 3 dense a layer; the pooler's weight and bias from modules_to_save.
    assert lora["matched"] == 2 * 2 + 2 * 3 + 2


def test_the_adapter_config_can_travel_in_the_recipe(tmp_path: Path) -> None:
    merged = bert_with_adapter(tmp_path)
    config = (tmp_path / "adapter" / "adapter_config.json").read_text()
    weights = tmp_path / "adapter" / "adapter_model.safetensors"
    (tmp_path / "adapter" / "adapter_config.json").unlink()  # as an upload holds the weights
    sources = NamedSources({"base": tmp_path / "bert", "adapter": weights})
    target = tmp_path / "bert" / "model.safetensors"
    with pytest.raises(InvalidRecipeError, match=r"lora\.config"):
        convert(sources, Target.from_checkpoint(target), load_recipe(MERGE), output=None)
    import json

    recipe = {**MERGE, "lora": {"merge": "adapter", "config": json.loads(config)}}
    out = tmp_path / "m.safetensors"
    result = convert(sources, Target.from_checkpoint(target), load_recipe(recipe), output=out)
    assert result.ok
    _assert_close_to_peft(load_file(out), merged)
