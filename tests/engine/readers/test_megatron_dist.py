"""Megatron-Core's ``torch_dist`` checkpoints (DCP folders Megatron's own code wrote), read by
the DCP reader without Megatron.

The fixtures (``tests/megatron_fixtures.py``): the TP 2 x PP 2 models of ``test_megatron.py``
(GQA/SwiGLU/RMSNorm) and ``test_megatron_gpt2.py`` (GPT-2 layout), each saved by 4 gloo
processes twice more: ``dist/`` by ``dist_checkpointing.save`` of the bare model, and
``training/`` by ``save_checkpoint`` with ``--ckpt-format torch_dist`` (the tracker file, then
``iter_0000007/`` with the args in its ``common_state``). The reference is the unsplit model
Megatron itself loaded from ``dist/``. The ``.metadata`` pickles Megatron's save plans next to
DCP's metadata: read as inert placeholders.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file

from app.engine.errors import UnsafeCheckpointError
from app.engine.pipeline import convert
from app.engine.readers import inspect_source, open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.fixtures import assert_refuses_code, cli_inspect
from tests.megatron_fixtures import VOCAB, megatron_checkpoint, unsplit_state
from tests.schemas import assert_valid

REPO = Path(__file__).resolve().parents[3]
# How Megatron names the local spec's layer norms in its sharded state dict (TE's names).
SHARDED_NAMES = {
    "input_layernorm.": "self_attention.linear_qkv.layer_norm_",
    "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_",
}
VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight")


def _sharded_name(key: str) -> str:
    for local, sharded in SHARDED_NAMES.items():
        key = key.replace(local, sharded)
    return key


@pytest.mark.parametrize(("kind", "layers"), [("gpt", 4), ("gpt2", 2)])
@pytest.mark.parametrize("saved", ["dist", "training"])
def test_each_layer_equals_the_unsplit_model_bit_for_bit(
    kind: str, layers: int, saved: str
) -> None:
    folder = megatron_checkpoint(kind)
    reference = torch.load(folder / "reference.pt", weights_only=True)
    expected = {_sharded_name(k): v for k, v in unsplit_state(reference).items()}
    # A training run's save (the tracker file, then its iteration) holds its args: the
    # vocabulary's padding is cut. dist_checkpointing.save of the bare model keeps it.
    with open_source(folder / saved) as source:
        assert source.format == "dcp"
        assert source.layout is not None and source.layout["stacked_layers"] == layers
        assert sorted(source.tensors) == sorted(expected)
        for key, want in expected.items():
            got = source.read(key)
            if key in VOCAB_KEYS and saved == "dist":
                assert got.shape == (128, *want.shape[1:]), key
                got = got[:VOCAB]
            assert got.dtype == want.dtype and torch.equal(got, want), key
        if saved == "training":
            layout = source.layout
            assert (layout["tensor_parallel"], layout["pipeline_parallel"]) == (2, 2)
            assert (layout["iteration"], layout["vocab"]) == (7, {"padded": 128, "kept": 100})


def test_inspect_names_layers_and_validates(tmp_path: Path) -> None:
    dist = megatron_checkpoint("gpt") / "dist"
    result = cli_inspect(dist)
    assert result.returncode == 0, result.stderr
    assert "decoder.layers.{0..3}.self_attention.linear_qkv.weight" in result.stdout
    assert "[6144, 64]" in result.stdout
    document = json.loads(cli_inspect(dist, "--json").stdout)
    assert document == inspect_source(dist)
    assert_valid("inspect", document)
    assert document["layout"]["stacked_layers"] == 4
    chunks = document["layout"]["chunks"]
    assert chunks["decoder.layers.3.self_attention.linear_qkv.weight"] == 2  # its 2 TP shards
    assert chunks["decoder.layers.3.self_attention.linear_qkv.layer_norm_weight"] == 1


@pytest.mark.parametrize("saved", ["dist", "training"])
def test_the_llama_recipe_gives_what_the_legacy_folder_gives(saved: str, tmp_path: Path) -> None:
    transformers: Any = pytest.importorskip("transformers")
    folder = megatron_checkpoint("gpt")
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=16, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )  # fmt: skip
    target = transformers.LlamaForCausalLM(config).eval()
    recipe: Any = "builtin:megatron-gpt-llama3-8b-to-transformers"
    if saved == "dist":  # no args saved: the padding rows the folder keeps, sliced off
        builtin = REPO / "app/engine/align/builtin/megatron-gpt-llama3-8b-to-transformers.yaml"
        recipe = {k: v for k, v in yaml.safe_load(builtin.read_text()).items() if k[:2] != "x-"}
        recipe["transform"] = [
            {"match": key, "op": "slice", "dim": 0, "stop": VOCAB}
            for key in ("model.embed_tokens.weight", "lm_head.weight")
        ]
    outputs = {}
    for name in ("legacy", saved):
        result = convert(
            folder / name,
            Target.from_module(target, name="llama"),
            load_recipe(
                recipe if name == saved else "builtin:megatron-gpt-llama3-8b-to-transformers"
            ),
            output=tmp_path / f"{name}.safetensors",
        )
        assert result.ok, result.report.get("errors")
        outputs[name] = load_file(str(tmp_path / f"{name}.safetensors"))
    assert sorted(outputs[saved]) == sorted(outputs["legacy"])
    assert all(torch.equal(outputs[saved][k], v) for k, v in outputs["legacy"].items())
    target.load_state_dict(outputs[saved], strict=True)
    reference = torch.load(folder / "reference.pt", weights_only=True)
    with torch.no_grad():
        logits = target(reference["tokens"]).logits
    want = reference["logits"][..., :VOCAB]
    assert torch.allclose(logits, want, atol=1e-5, rtol=0), (logits - want).abs().max()


class _Runs:
    """Pickles as a call of ``os.system``."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (self.command,))


def test_a_save_plan_that_runs_code_is_refused(tmp_path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    copy = tmp_path / "training"
    shutil.copytree(megatron_checkpoint("gpt") / "training", copy)
    canary = tmp_path / "canary"
    metadata = FileSystemReader(str(copy / "iter_0000007")).read_metadata()
    # Megatron's plans are read as placeholders: one that carries a call is still refused.
    metadata.all_local_plans[0].items.append(_Runs(f"touch {shlex.quote(str(canary))}"))
    (copy / "iter_0000007" / ".metadata").write_bytes(pickle.dumps(metadata))
    assert_refuses_code(copy, canary)


def test_a_common_state_that_runs_code_is_refused(tmp_path: Path) -> None:
    from torch.distributed.checkpoint import FileSystemReader

    copy = tmp_path / "training"
    shutil.copytree(megatron_checkpoint("gpt") / "training", copy)
    iteration = copy / "iter_0000007"
    canary = tmp_path / "canary"
    # The args' pickle, swapped for one that calls os.system: appended to a .distcp file,
    # and the metadata pointed at it.
    evil = io.BytesIO()
    torch.save({"args": _Runs(f"touch {shlex.quote(str(canary))}")}, evil)
    shard = iteration / "__0_0.distcp"
    offset = shard.stat().st_size
    with shard.open("ab") as f:
        f.write(evil.getvalue())
    metadata = FileSystemReader(str(iteration)).read_metadata()
    (index,) = [i for i in metadata.storage_data if i.fqn.startswith("common_state")]
    info = metadata.storage_data[index]
    info.relative_path, info.offset, info.length = shard.name, offset, len(evil.getvalue())
    (iteration / ".metadata").write_bytes(pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpointError, match=r"references '(posix|os)\.system'"):
        open_source(copy)
    assert not canary.exists()
