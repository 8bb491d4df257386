"""Megatron-LM checkpoints as sources (SPEC §2.3), written by Megatron-Core itself.

The fixture is written once per machine (``tests/megatron_fixtures.py``) by
``megatron_writer.py`` in Megatron-Core 0.19.2's own venv (``make megatron-venv``; Python
3.12): a GQA ``GPTModel`` saved with TP 2 x PP 2 by 4 gloo processes through
``megatron.training.checkpointing.save_checkpoint``, and the reference: the same model
unsplit (TP 1, PP 1), into which Megatron's ``dist_checkpointing`` loaded the 4 shards, with
its logits on fixed tokens. Graft reads the legacy folder without Megatron.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.pipeline import convert
from app.engine.readers import inspect_source, open_source
from app.engine.recipe import load_recipe
from app.engine.target import Target
from tests.fixtures import assert_refuses_code, cli_inspect, reduce_pickle, replace_zip_member
from tests.megatron_fixtures import megatron_checkpoint, unsplit_state
from tests.parts import import_part
from tests.schemas import assert_valid
from tests.test_cli_convert import graft

VOCAB = 100
RANKS = ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]


@pytest.fixture(scope="module")
def megatron() -> tuple[Path, dict[str, Any]]:
    out = megatron_checkpoint("gpt")
    reference = torch.load(out / "reference.pt", weights_only=True)
    return out / "legacy", reference


def _expected(reference: dict[str, Any]) -> dict[str, torch.Tensor]:
    return unsplit_state(reference)


def test_the_merged_view_equals_the_unsplit_model_bit_for_bit(megatron: Any) -> None:
    path, reference = megatron
    assert sorted(p.name for p in (path / "iter_0000007").iterdir()) == RANKS
    expected = _expected(reference)
    with open_source(path) as source:
        assert source.format == "megatron"
        assert sorted(source.tensors) == sorted(expected)
        for key, want in expected.items():
            got = source.read(key)
            assert got.dtype == want.dtype and got.shape == want.shape, key
            assert torch.equal(got, want), key
        # the shards really were split: a qkv of 8 query groups, 4 per TP rank
        assert source.tensors["decoder.layers.3.self_attention.linear_qkv.weight"].shape == (
            6144,
            64,
        )


def test_inspect_shows_global_shapes_and_the_layout(megatron: Any) -> None:
    path, _ = megatron
    result = cli_inspect(path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[3] == (
        "layout    megatron v3.0  world size 4 (4 files)  TP 2 x PP 2  iteration 7  "
        "chunks per tensor: 1 (9 tensors), 2 (18 tensors)"
    )
    assert any(line.startswith("ignored   args (") and "rng_state" in line for line in lines)
    assert "embedding.word_embeddings.weight                         1  [100, 64]" in result.stdout
    document = json.loads(cli_inspect(path, "--json").stdout)
    assert document == inspect_source(path)
    assert_valid("inspect", document)
    layout = document["layout"]
    assert (layout["tensor_parallel"], layout["pipeline_parallel"]) == (2, 2)
    assert layout["layers_per_stage"] == {"0": 2, "1": 2}
    assert layout["vocab"] == {"padded": 128, "kept": 100}


def test_convert_equals_the_unsplit_reference(megatron: Any, tmp_path: Path) -> None:
    path, reference = megatron
    expected = _expected(reference)
    template = tmp_path / "target.pt"
    torch.save({k: torch.zeros_like(v) for k, v in expected.items()}, template)
    out = tmp_path / "model.safetensors"
    report = tmp_path / "r.json"
    result = graft("convert", path, template, "-o", out, "--report", report)
    assert result.exit_code == 0, result.output
    written = load_file(out)
    assert sorted(written) == sorted(expected)
    assert all(torch.equal(written[k], v) for k, v in expected.items())
    document = json.loads(report.read_text())
    assert document["source"]["format"] == "megatron"
    assert document["verification"]["equal"] == len(expected)


def test_builtin_recipe_to_transformers_llama_computes_megatrons_logits(
    megatron: Any, tmp_path: Path
) -> None:
    transformers: Any = import_part("transformers", "transformers", "make setup installs it")
    path, reference = megatron
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
        num_attention_heads=32, num_key_value_heads=8, head_dim=128,
        max_position_embeddings=16, rms_norm_eps=1e-5, rope_theta=10000.0,
        tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
    )  # fmt: skip
    target = transformers.LlamaForCausalLM(config).eval()
    result = convert(
        path,
        Target.from_module(target, name="llama"),
        load_recipe("builtin:megatron-gpt-llama3-8b-to-transformers"),
        output=tmp_path / "llama.safetensors",
    )
    assert result.ok, result.report.get("errors")
    written = load_file(str(tmp_path / "llama.safetensors"))
    target.load_state_dict(written, strict=True)
    # The split, checked by hand: group g of the fused qkv is [4 q heads, k, v] of 128 rows.
    qkv = _expected(reference)["decoder.layers.2.self_attention.linear_qkv.weight"]
    groups = qkv.view(8, 6, 128, 64)
    assert torch.equal(
        written["model.layers.2.self_attn.q_proj.weight"], groups[:, :4].reshape(-1, 64)
    )
    assert torch.equal(
        written["model.layers.2.self_attn.k_proj.weight"], groups[:, 4].reshape(-1, 64)
    )
    assert torch.equal(
        written["model.layers.2.self_attn.v_proj.weight"], groups[:, 5].reshape(-1, 64)
    )
    fc1 = _expected(reference)["decoder.layers.1.mlp.linear_fc1.weight"]
    assert torch.equal(written["model.layers.1.mlp.gate_proj.weight"], fc1[:96])
    assert torch.equal(written["model.layers.1.mlp.up_proj.weight"], fc1[96:])
    with torch.no_grad():
        logits = target(reference["tokens"]).logits
    want = reference["logits"][..., :VOCAB]
    assert torch.allclose(logits, want, atol=1e-5, rtol=0), (logits - want).abs().max()


def test_a_code_running_rank_file_is_refused_with_exit_2(megatron: Any, tmp_path: Path) -> None:
    path, _ = megatron
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    canary = tmp_path / "canary"
    rank = copy / "iter_0000007" / "mp_rank_01_001" / "model_optim_rng.pt"
    evil = reduce_pickle(os.system, f"touch {shlex.quote(str(canary))}")
    replace_zip_member(rank, tmp_path / "evil.pt", "data.pkl", evil)
    shutil.move(tmp_path / "evil.pt", rank)
    assert_refuses_code(copy, canary)


def test_megatron_args_are_read_as_inert_placeholders(megatron: Any) -> None:
    from app.engine.readers.megatron_layout import INERT_GLOBALS, Inert, read_args
    from app.engine.readers.torch_zip import ZipReader

    path, _ = megatron
    reader = ZipReader(path / "iter_0000007" / RANKS[0] / "model_optim_rng.pt", extra=INERT_GLOBALS)
    try:
        root = reader.parsed.root
        args = root["args"]
        assert isinstance(args, Inert) and args.cls == "argparse.Namespace"
        signal = args.state["exit_signal"]
        assert isinstance(signal, Inert) and (signal.cls, signal.args) == ("signal.Signals", (15,))
        assert args.state["attention_backend"].cls.startswith("megatron.core.")
        numbers = read_args(root, "rank 0")
        assert (numbers.tensor_parallel, numbers.pipeline_parallel, numbers.query_groups) == (
            2,
            2,
            8,
        )
        assert (numbers.vocab_size, numbers.padded_vocab_size, numbers.gated) == (100, 128, True)
    finally:
        reader.close()
    # without the placeholders, the same file is refused, not loaded
    with pytest.raises(UnsafeCheckpointError, match=r"argparse\.Namespace"):
        ZipReader(path / "iter_0000007" / RANKS[0] / "model_optim_rng.pt")


def test_an_iteration_folder_or_one_rank_file_opens_the_whole_checkpoint(megatron: Any) -> None:
    path, _ = megatron
    whole = inspect_source(path)
    assert inspect_source(path / "iter_0000007") == whole
    one_rank = path / "iter_0000007" / RANKS[2] / "model_optim_rng.pt"
    assert inspect_source(one_rank)["layout"] == whole["layout"]


def test_a_rank_file_alone_in_its_rank_folder_is_one_rank(megatron: Any, tmp_path: Path) -> None:
    # (a TP 1 x PP 1 upload, as a job links it: source/mp_rank_00_000/model_optim_rng.pt)
    path, _ = megatron
    alone = tmp_path / "source" / RANKS[2] / "model_optim_rng.pt"
    alone.parent.mkdir(parents=True)
    shutil.copy(path / "iter_0000007" / RANKS[2] / "model_optim_rng.pt", alone)
    with pytest.raises(UnreadableCheckpointError, match=r"TP 2 x PP 2, but the folder holds 1"):
        open_source(alone)


def test_a_missing_rank_is_named(megatron: Any, tmp_path: Path) -> None:
    path, _ = megatron
    copy = tmp_path / "ckpt"
    shutil.copytree(path, copy)
    shutil.rmtree(copy / "iter_0000007" / "mp_rank_01_000")
    with pytest.raises(UnreadableCheckpointError, match=r"missing \(tp, pp\) \[\(1, 0\)\]"):
        open_source(copy)
    (copy / "latest_checkpointed_iteration.txt").write_text("9")
    with pytest.raises(UnreadableCheckpointError, match="names iteration '9'"):
        open_source(copy)


def test_a_tp1_checkpoint_is_the_unsplit_model_its_vocab_padding_cut() -> None:
    folder = megatron_checkpoint("gpt")  # tp1/: saved by the unsplit model itself
    expected = unsplit_state(torch.load(folder / "reference.pt", weights_only=True))
    with open_source(folder / "tp1") as source:
        assert source.layout is not None
        assert source.layout["vocab"] == {"padded": 112, "kept": VOCAB}  # padded for TP 1
        assert sorted(source.tensors) == sorted(expected)
        assert all(torch.equal(source.read(k), v) for k, v in expected.items())
