"""A GPT-2-style Megatron-LM checkpoint, written by Megatron-Core itself, to transformers'
``GPT2LMHeadModel`` with ``builtin:megatron-gpt2-to-transformers``.

The fixture (``tests/megatron_fixtures.py``, kind ``gpt2``): a ``GPTModel`` with GPT-2's
layout (learned absolute position embeddings, LayerNorm, GELU MLP, biases, the output layer
tied to the word embeddings) and GPT-2 small's attention (12 heads of 64, hidden 768), saved
with TP 2 x PP 2 by 4 gloo processes through ``save_checkpoint``; and its reference: the same
model unsplit, loaded by Megatron's ``dist_checkpointing``, with Megatron's own logits on fixed
tokens. The converted model must load strict and give those logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.engine.pipeline import convert
from app.engine.readers import open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.megatron_fixtures import VOCAB, megatron_checkpoint, unsplit_state
from tests.parts import import_part

HEADS, HEAD_DIM, HIDDEN = 12, 64, 768


@pytest.fixture(scope="module")
def megatron() -> tuple[Path, dict[str, Any]]:
    out = megatron_checkpoint("gpt2")
    return out / "legacy", torch.load(out / "reference.pt", weights_only=True)


def test_the_merged_view_equals_the_unsplit_model_and_its_tied_copy(megatron: Any) -> None:
    path, reference = megatron
    expected = unsplit_state(reference)
    with open_source(path) as source:
        # the last stage keeps its own copy of the tied word embeddings as its output layer
        assert sorted(source.tensors) == sorted([*expected, "output_layer.weight"])
        for key, want in expected.items():
            got = source.read(key)
            assert got.dtype == want.dtype and torch.equal(got, want), key
        tied = source.read("output_layer.weight")
        assert torch.equal(tied, expected["embedding.word_embeddings.weight"])
        # split over TP: the fused qkv and its bias by columns, linear_proj by rows
        assert (
            source.layout is not None
            and source.layout["chunks"]["decoder.layers.1.self_attention.linear_qkv.bias"] == 2
        )
        assert source.tensors["decoder.layers.1.self_attention.linear_proj.weight"].shape == (
            HIDDEN,
            HIDDEN,
        )


@pytest.mark.parametrize("saved", ["legacy", "training"])
def test_builtin_recipe_to_gpt2_computes_megatrons_logits(
    megatron: Any, saved: str, tmp_path: Path
) -> None:
    """From the legacy folder, and from the torch_dist save of the same run (stacked layers,
    Transformer Engine's layer-norm names, no copy of the tied output layer)."""
    transformers: Any = import_part("transformers", "transformers", "make setup installs it")
    path, reference = megatron
    path = path.parent / saved
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_positions=16, n_embd=HIDDEN, n_layer=2, n_head=HEADS, n_inner=256,
        activation_function="gelu", layer_norm_epsilon=1e-5, tie_word_embeddings=True,
    )  # fmt: skip
    target = transformers.GPT2LMHeadModel(config).eval()
    result = convert(
        path,
        Target.from_module(target, name="gpt2"),
        load_recipe("builtin:megatron-gpt2-to-transformers"),
        output=tmp_path / "gpt2.safetensors",
    )
    assert result.ok, result.report.get("errors")
    written = load_file(str(tmp_path / "gpt2.safetensors"))
    target.load_state_dict(written, strict=True)
    # The regrouping, checked by hand: Megatron's rows are (head, q|k|v, dim); GPT-2's
    # Conv1D columns are (q|k|v, head, dim).
    expected = unsplit_state(reference)
    qkv = expected["decoder.layers.1.self_attention.linear_qkv.weight"].view(HEADS, 3, HEAD_DIM, -1)
    bias = expected["decoder.layers.1.self_attention.linear_qkv.bias"].view(HEADS, 3, HEAD_DIM)
    for part in range(3):
        columns = slice(part * HIDDEN, (part + 1) * HIDDEN)
        want = qkv[:, part].reshape(HIDDEN, HIDDEN).t()
        assert torch.equal(written["transformer.h.1.attn.c_attn.weight"][:, columns], want)
        assert torch.equal(
            written["transformer.h.1.attn.c_attn.bias"][columns], bias[:, part].reshape(-1)
        )
    fc2 = expected["decoder.layers.0.mlp.linear_fc2.weight"]
    assert torch.equal(written["transformer.h.0.mlp.c_proj.weight"], fc2.t())
    assert torch.equal(written["lm_head.weight"], expected["embedding.word_embeddings.weight"])
    with torch.no_grad():
        logits = target(reference["tokens"]).logits
    want = reference["logits"][..., :VOCAB]
    assert torch.allclose(logits, want, atol=2e-6, rtol=0), (logits - want).abs().max()
