"""Parity names the module where a conversion went wrong (SPEC §3.2).

Each silent failure the issue trackers of transformers, llama.cpp and mergekit keep meeting
is seeded into a real conversion of a tiny LLaMA (weights drawn by transformers'
``LlamaModel``, converted to and from Meta's layout), and parity must name the module where
it first shows; the same conversion done right must pass.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from app.engine.options import WriteOptions
from app.engine.parity_models import ParitySpec
from tests.engine._models import run, save_st, skeleton_of
from tests.engine.parity.models import DIM, HEAD_DIM, HEADS, hf_llama, meta_from_hf
from tests.parts import import_part

import_part("transformers", "transformers", "make setup installs it")

MODELS = "tests.engine.parity.models"
ROTARY = r"re:layers\.\d+\.self_attn\.[qk]_proj\.weight"
META_TO_HF: dict[str, Any] = {
    "rename": [
        {"prefix": "tok_embeddings.", "to": "embed_tokens."},
        {"regex": r"^layers\.(\d+)\.attention\.w([qkvo])\.", "to": r"layers.\1.self_attn.\2_proj."},
        {"regex": r"^layers\.(\d+)\.feed_forward\.w1\.", "to": r"layers.\1.mlp.gate_proj."},
        {"regex": r"^layers\.(\d+)\.feed_forward\.w2\.", "to": r"layers.\1.mlp.down_proj."},
        {"regex": r"^layers\.(\d+)\.feed_forward\.w3\.", "to": r"layers.\1.mlp.up_proj."},
        {"regex": r"^layers\.(\d+)\.attention_norm\.", "to": r"layers.\1.input_layernorm."},
        {"regex": r"^layers\.(\d+)\.ffn_norm\.", "to": r"layers.\1.post_attention_layernorm."},
    ],
}
# Meta's interleaved q/k rows to transformers' half-split ones (convert_llama_weights_to_hf).
PERMUTE_ROTARY = [
    {"match": ROTARY, "op": "reshape", "shape": [HEADS, HEAD_DIM // 2, 2, DIM]},
    {"match": ROTARY, "op": "transpose", "dims": [1, 2]},
    {"match": ROTARY, "op": "reshape", "shape": [DIM, DIM]},
]


@pytest.fixture(scope="module")
def meta_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    """A tiny LLaMA drawn by transformers, in Meta's layout; values large enough that a
    wrong module moves its output well past the tolerances."""
    torch.manual_seed(0)
    model = hf_llama()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1 + 0.2 * noise if name.endswith("norm.weight") else 0.3 * noise)
    return meta_from_hf(model.state_dict())


def _parity(
    tmp_path: Path,
    weights: dict[str, torch.Tensor],
    recipe: dict[str, Any],
    *,
    reference: dict[str, Any],
    target: tuple[str, dict[str, Any]],
) -> dict[str, Any]:
    """Convert ``weights`` into ``target``'s model with ``recipe``, with parity against the
    Meta-layout reference; the report."""
    import importlib

    src = save_st(weights, tmp_path / "meta.safetensors")
    module, _, attr = target[0].partition(":")
    skeleton = skeleton_of(getattr(importlib.import_module(module), attr)(**target[1]))
    spec = ParitySpec(reference=f"{MODELS}:MetaLlama", reference_kwargs=reference,
                      target_module=target[0], target_module_kwargs=target[1],
                      allow_imports=True)  # fmt: skip
    result, _ = run(src, skeleton, recipe, tmp_path / "out.safetensors",
                    options=WriteOptions(parity=spec))  # fmt: skip
    report: dict[str, Any] = result.report
    return report


HF = (f"{MODELS}:hf_llama", {})


def _divergence(report: dict[str, Any]) -> tuple[str, str]:
    first = report["verification"]["parity"]["first_divergence"]
    return first["target_module"], first["source_module"]


def test_meta_to_transformers_with_the_rotary_permutation_passes(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor]
) -> None:
    recipe = {**META_TO_HF, "transform": PERMUTE_ROTARY, "strict": True}
    report = _parity(tmp_path, meta_weights, recipe, reference={}, target=HF)
    parity = report["verification"]["parity"]
    assert report["ok"] is True, report.get("errors")
    assert (parity["equal"], parity["first_divergence"], parity["skipped"]) == (True, None, [])
    # q and k compute the source's values in transformers' order; everything after agrees.
    assert parity["permuted"] == [f"layers.{i}.self_attn.{p}_proj" for i in range(2) for p in "qk"]
    assert parity["modules_compared"] == 12 * 2 + 3  # per layer 12, embedding, norm, model
    assert parity["inputs"] == [{"shape": [2, 16], "dtype": "int64", "low": 0, "high": 64}]


def test_rotary_rows_left_in_meta_order_are_named_at_the_attention(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor]
) -> None:
    report = _parity(tmp_path, meta_weights, {**META_TO_HF, "strict": True}, reference={},
                     target=HF)  # fmt: skip
    assert report["ok"] is False
    assert _divergence(report) == ("layers.0.self_attn", "layers.0.attention")
    assert report["errors"] == [
        "parity: layers.0.self_attn diverges from the source's layers.0.attention (max |diff| "
        f"{report['verification']['parity']['first_divergence']['max_abs_diff']:.3g} > "
        "atol 1e-05 + rtol 0.0001)"
    ]


def test_a_square_weight_transposed_is_named(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor]
) -> None:
    transpose = {"match": "layers.1.self_attn.o_proj.weight", "op": "transpose"}
    recipe = {**META_TO_HF, "transform": [*PERMUTE_ROTARY, transpose]}
    report = _parity(tmp_path, meta_weights, recipe, reference={}, target=HF)
    assert report["ok"] is False
    assert _divergence(report) == ("layers.1.self_attn.o_proj", "layers.1.attention.wo")


@pytest.mark.parametrize(("order", "ok"), [(["wq", "wk", "wv"], True), (["wk", "wq", "wv"], False)])
def test_qkv_concatenated_in_the_wrong_order_is_named_at_the_attention(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor], order: list[str], ok: bool
) -> None:
    first, *rest = order
    merge = {"from": [rf"re:layers\.(\d+)\.attention\.{first}\.weight",
                      *(rf"layers.\1.attention.{name}.weight" for name in rest)],
             "to": r"layers.\1.attention.wqkv.weight", "dim": 0}  # fmt: skip
    report = _parity(tmp_path, meta_weights, {"merge": [merge], "strict": True}, reference={},
                     target=(f"{MODELS}:MetaLlama", {"fused_qkv": True}))  # fmt: skip
    assert report["ok"] is ok
    parity = report["verification"]["parity"]
    # The fused projection has no single source module: it is not compared on its own.
    assert [s["target_module"] for s in parity["skipped"]] == [
        "layers.0.attention.wqkv", "layers.1.attention.wqkv",
    ]  # fmt: skip
    if not ok:
        assert _divergence(report) == ("layers.0.attention", "layers.0.attention")


@pytest.mark.parametrize(("copy", "ok"), [(True, True), (False, False)])
def test_a_tied_head_initialised_instead_of_tied_is_named(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor], copy: bool, ok: bool
) -> None:
    # A tied checkpoint stores the shared tensor once, under the embedding's name.
    recipe: dict[str, Any] = {"copy": [{"from": "tok_embeddings.weight", "to": "output.weight"}]}
    report = _parity(tmp_path, meta_weights, recipe if copy else {},
                     reference={"head": True, "tie": True},
                     target=(f"{MODELS}:MetaLlama", {"head": True}))  # fmt: skip
    assert report["ok"] is ok
    status = next(e["status"] for e in report["entries"] if e["target"] == "output.weight")
    assert status == ("tied" if copy else "initialized")
    if not ok:
        assert _divergence(report) == ("output", "output")


@pytest.mark.parametrize(("source_offset", "target_offset"), [(True, False), (False, True)])
def test_an_rmsnorm_offset_lost_or_baked_in_is_named(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor], source_offset: bool,
    target_offset: bool,
) -> None:  # fmt: skip
    report = _parity(tmp_path, meta_weights, {"strict": True},
                     reference={"norm_offset": source_offset},
                     target=(f"{MODELS}:MetaLlama", {"norm_offset": target_offset}))  # fmt: skip
    assert report["ok"] is False
    assert _divergence(report) == ("layers.0.attention_norm", "layers.0.attention_norm")


def test_parity_warn_reports_the_divergence_and_converts(
    tmp_path: Path, meta_weights: dict[str, torch.Tensor]
) -> None:
    report = _parity(tmp_path, meta_weights, {**META_TO_HF, "parity": "warn"}, reference={},
                     target=HF)  # fmt: skip
    assert report["ok"] is True
    assert report["verification"]["parity"]["policy"] == "warn"
    assert [w for w in report["warnings"] if w.startswith("parity:")] == [
        "parity: layers.0.self_attn diverges from the source's layers.0.attention (max |diff| "
        f"{report['verification']['parity']['first_divergence']['max_abs_diff']:.3g} > "
        "atol 1e-05 + rtol 0.0001)"
    ]
