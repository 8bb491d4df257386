"""Several sources: a model assembled from layer ranges of two library-generated GPT-2s
(``slices``), and one from two checkpoints (a vision tower from one, a text model from the
other), each equal, tensor for tensor, to the same model assembled in plain torch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.engine.errors import InvalidRecipeError
from app.engine.options import WriteOptions
from app.engine.pipeline import convert
from app.engine.readers import NamedSources
from app.engine.recipe import load_recipe
from app.engine.report import Report
from app.engine.target import Target
from tests.parts import import_part

transformers: Any = import_part("transformers", "transformers", "make setup installs it")


def gpt2(seed: int, layers: int = 4) -> Any:
    torch.manual_seed(seed)
    config = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=16, n_layer=layers, n_head=2
    )
    return transformers.GPT2LMHeadModel(config).eval()


def save_gpt2(seed: int, folder: Path, layers: int = 4) -> dict[str, torch.Tensor]:
    model = gpt2(seed, layers)
    model.save_pretrained(folder)  # safetensors, lm_head tied to wte and stored once
    return {k: v.clone() for k, v in model.state_dict().items()}


SLICED = {
    "sources": {"a": {}, "b": {}},
    "slices": [{"from": "a", "layers": [0, 2]}, {"from": "b", "layers": [1, 4]}],
    "rename": [{"prefix": "a:", "to": ""}],  # embeddings and the final norm from a
    "copy": [{"from": "transformer.wte.weight", "to": "lm_head.weight"}],
}


def test_layers_from_two_gpt2s_equal_the_model_assembled_in_torch(tmp_path: Path) -> None:
    a = save_gpt2(1, tmp_path / "a")
    b = save_gpt2(2, tmp_path / "b")
    target = gpt2(3, layers=5)
    out = tmp_path / "out.safetensors"
    result = convert(
        NamedSources({"a": tmp_path / "a", "b": tmp_path / "b"}),
        Target.from_module(target, name="gpt2-5"),
        load_recipe(SLICED),
        output=out,
    )
    assert result.ok, result.report.get("errors")
    # The same model in plain torch: a's layers 0-1, then b's layers 1-3 as 2-4.
    expected = {k: v for k, v in a.items() if not k.startswith("transformer.h.")}
    for new, (theirs, old) in enumerate([(a, 0), (a, 1), (b, 1), (b, 2), (b, 3)]):
        for k, v in theirs.items():
            if k.startswith(f"transformer.h.{old}."):
                expected[k.replace(f".h.{old}.", f".h.{new}.", 1)] = v
    got = load_file(out)
    assert set(got) == set(target.state_dict()) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    # The assembled model runs as the torch one does.
    target.load_state_dict(got)
    report = Report.from_json(result.report)
    assert isinstance(report.source, list)
    assert [s.name for s in report.source] == ["a", "b"]
    by_target = {e.target: e for e in report.entries}
    assert by_target["transformer.h.3.attn.c_attn.weight"].sources == [
        "b:transformer.h.2.attn.c_attn.weight"
    ]
    assert by_target["transformer.h.3.attn.c_attn.weight"].rules == ["slices[1]"]
    assert by_target["transformer.wte.weight"].sources == ["a:transformer.wte.weight"]
    dropped = {u.source for u in report.unused if u.rule == "slices"}
    assert "a:transformer.h.2.mlp.c_fc.weight" in dropped
    assert "b:transformer.h.0.mlp.c_fc.weight" in dropped
    # b's embeddings fed nothing: listed, not lost.
    assert any(u.source == "b:transformer.wte.weight" for u in report.unused)


class VisionLanguage(nn.Module):
    """A toy vision-language model: a ViT-ish tower, a projector, and a GPT-2."""

    def __init__(self, text: Any) -> None:
        super().__init__()
        self.vision_tower = nn.Sequential(nn.Conv2d(3, 8, 4, stride=4), nn.LayerNorm([8, 2, 2]))
        self.projector = nn.Linear(32, 16)
        self.language_model = text


def test_a_vision_tower_from_one_checkpoint_and_text_from_another(tmp_path: Path) -> None:
    torch.manual_seed(5)
    vision = {k: v.clone() for k, v in VisionLanguage(gpt2(0)).vision_tower.state_dict().items()}
    save_file({f"backbone.{k}": v for k, v in vision.items()}, tmp_path / "vision.safetensors")
    text = save_gpt2(7, tmp_path / "gpt2")
    target = VisionLanguage(gpt2(9))
    recipe = load_recipe(
        {
            "sources": {"vision": "vision.safetensors", "text": "gpt2"},
            "rename": [
                {"prefix": "vision:backbone.", "to": "vision_tower."},
                {"prefix": "text:", "to": "language_model."},
            ],
            "copy": [
                {
                    "from": "language_model.transformer.wte.weight",
                    "to": "language_model.lm_head.weight",
                }
            ],
        }
    )
    out = tmp_path / "vlm.safetensors"
    result = convert(
        NamedSources({"vision": tmp_path / "vision.safetensors", "text": tmp_path / "gpt2"}),
        Target.from_module(target, name="vlm"),
        recipe,
        output=out,
        options=WriteOptions(source_digest="sha256"),
    )
    assert result.ok, result.report.get("errors")
    got = load_file(out)
    expected = {f"vision_tower.{k}": v for k, v in vision.items()}
    expected |= {f"language_model.{k}": v for k, v in text.items()}
    assert set(got) == set(expected) | {"projector.weight", "projector.bias"}
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    sources = result.report["source"]
    assert [(s["name"], s["format"]) for s in sources] == [
        ("vision", "safetensors"),
        ("text", "safetensors"),
    ]
    # The single-file source's digest is its file's sha256, computed here independently.
    vision_sha = hashlib.sha256((tmp_path / "vision.safetensors").read_bytes()).hexdigest()
    assert sources[0]["sha256"] == vision_sha
    assert len(sources[1]["sha256"]) == 64 and sources[1]["sha256"] != vision_sha
    statuses = {e["target"]: e["status"] for e in result.report["entries"]}
    assert statuses["projector.weight"] == "initialized"  # neither source has one
    assert result.report["unused"] == []  # every key of both sources fed the model
    json.dumps(result.report)


def test_a_recipe_naming_sources_needs_each_one(tmp_path: Path) -> None:
    save_gpt2(1, tmp_path / "a")
    with pytest.raises(InvalidRecipeError, match="missing: b"):
        convert(
            NamedSources({"a": tmp_path / "a"}),
            Target.from_module(gpt2(0), name="gpt2"),
            load_recipe(SLICED),
            output=None,
            dry_run=True,
        )


def test_a_slice_past_the_last_layer_is_refused_by_name(tmp_path: Path) -> None:
    save_gpt2(1, tmp_path / "a")
    save_gpt2(2, tmp_path / "b")
    recipe = {
        **SLICED,
        "slices": [{"from": "a", "layers": [0, 2]}, {"from": "b", "layers": [2, 6]}],
    }
    with pytest.raises(InvalidRecipeError, match="no layer 4") as caught:
        convert(
            NamedSources({"a": tmp_path / "a", "b": tmp_path / "b"}),
            Target.from_module(gpt2(0, layers=6), name="gpt2"),
            load_recipe(recipe),
            output=None,
            dry_run=True,
        )
    assert caught.value.rule == "slices[1]"
