"""Graft's output loads with ``transformers``: a tiny ``BertModel`` goes through a rename and back
(the reverse recipe from ``invert_recipe``), is written as Hugging Face shards, and
``BertModel.from_pretrained(dir)`` (offline) loads it with no missing or unexpected key and
gives the source model's outputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.engine.invert import invert_recipe
from app.engine.options import WriteOptions
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.engine._models import run
from tests.parts import import_part

transformers: Any = import_part("transformers", "transformers", "make setup installs it")

FORWARD = {"rename": [{"regex": r"^encoder\.layer\.(\d+)\.", "to": r"blocks.\1."}], "strict": True}


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _bert(tmp_path: Path) -> tuple[object, Path]:
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=24,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    path = tmp_path / "bert.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, path


def _renamed_template(source: Path, path: Path) -> Target:
    """The forward target: the same tensors under ``blocks.N.``."""
    with safe_open(str(source), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    renamed = {
        k.replace("encoder.layer.", "blocks.", 1) if k.startswith("encoder.layer.") else k: v
        for k, v in tensors.items()
    }
    save_file(renamed, str(path))
    return Target.from_checkpoint(path)


@pytest.mark.parametrize("shard", [2048, None], ids=["shards", "one-file"])
def test_rename_there_and_back_loads_in_bert_from_pretrained(
    tmp_path: Path, shard: int | None
) -> None:
    model, source = _bert(tmp_path)
    there, _ = run(
        source,
        _renamed_template(source, tmp_path / "renamed-template.safetensors"),
        FORWARD,
        tmp_path / "renamed.safetensors",
    )
    assert there.ok and there.report["summary"]["loaded"] == len(model.state_dict())
    back = invert_recipe(load_recipe(FORWARD)).recipe
    assert back == {
        "version": 1,
        "rename": [{"regex": r"^blocks\.(\d+)\.", "to": r"encoder.layer.\1."}],
        "strict": True,
    }
    folder = tmp_path / "hf"
    options = WriteOptions(max_shard_size=shard if shard else 1 << 40)
    with Target.from_checkpoint(source) as target:
        from app.engine.pipeline import convert

        result = convert(
            tmp_path / "renamed.safetensors", target, load_recipe(back), output=folder,
            options=options,
        )  # fmt: skip
    assert result.ok, result.report.get("errors")
    files = sorted(p.name for p in folder.iterdir())
    assert result.report["output"]["files"] == sorted(result.report["output"]["files"])
    if shard:
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        shards = sorted({*index["weight_map"].values()})
        count = len(shards)
        assert count > 1
        assert shards == [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        assert files == [*shards, "model.safetensors.index.json"]
        assert set(result.report["output"]["files"]) == set(files)
        assert index["metadata"]["total_size"] == sum(
            v.numel() * v.element_size() for v in model.state_dict().values()
        )
    else:  # what save_pretrained writes when everything fits in one shard
        assert files == ["model.safetensors"] == result.report["output"]["files"]
    for name in files:
        if name.endswith(".safetensors"):
            with safe_open(str(folder / name), framework="pt") as f:
                assert f.metadata()["format"] == "pt"
    model.config.save_pretrained(folder)

    loaded, info = transformers.BertModel.from_pretrained(
        str(folder), output_loading_info=True, local_files_only=True
    )
    assert info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["mismatched_keys"] == []
    loaded.eval()
    ids = torch.tensor([[1, 5, 7, 9, 2], [3, 4, 4, 8, 0]])
    with torch.no_grad():
        expected = model(input_ids=ids).last_hidden_state
        got = loaded(input_ids=ids).last_hidden_state
    assert torch.equal(got, expected)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert os.environ["HF_HUB_OFFLINE"] == "1"
