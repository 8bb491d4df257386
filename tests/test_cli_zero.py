"""``graft convert`` and ``graft inspect`` of DeepSpeed ZeRO folders, as a user runs them.

The folders are written by DeepSpeed 0.19.8 itself (tests/zero_fixtures.py); the converted
file must hold DeepSpeed's own ``get_fp32_state_dict_from_zero_checkpoint`` bit for bit.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from app.engine.readers import inspect_source
from tests.fixtures import cli_inspect, reduce_pickle, replace_zip_member
from tests.schemas import assert_valid
from tests.test_cli_convert import graft_process
from tests.zero_fixtures import MODULE, REFERENCE, STAGES, zero_checkpoint


@pytest.fixture(scope="module")
def zero() -> dict[int, Path]:
    return {stage: zero_checkpoint(stage) for stage in STAGES}


def _template(zero: dict[int, Path], path: Path) -> Path:
    reference = torch.load(zero[2] / REFERENCE, weights_only=True)
    torch.save({k: torch.zeros_like(v) for k, v in reference.items()}, path)
    return path


@pytest.mark.parametrize("stage", STAGES)
def test_convert_gives_deepspeeds_own_merge(
    zero: dict[int, Path], stage: int, tmp_path: Path
) -> None:
    template = _template(zero, tmp_path / "target.pt")
    out, report = tmp_path / "model.safetensors", tmp_path / "report.json"
    result = graft_process("convert", zero[stage] / "ckpt", template, "-o", out, "--report", report)
    assert result.returncode == 0, result.stderr
    written = load_file(out)
    reference = torch.load(zero[stage] / REFERENCE, weights_only=True)
    if stage == 1:  # zero_to_fp32 drops ZeRO 1's frozen weights; Graft takes the module's
        module = torch.load(zero[stage] / MODULE, weights_only=True)
        reference |= {k: module[k] for k in ("frozen.weight", "frozen.bias")}
    assert sorted(written) == sorted(reference)
    for key, want in reference.items():
        assert written[key].dtype == want.dtype and torch.equal(written[key], want), key
    document = json.loads(report.read_text())
    assert (document["source"]["format"], document["source"]["entry"]) == ("deepspeed", "fp32")
    assert document["verification"]["equal"] == 11


def test_convert_the_module_entry(zero: dict[int, Path], tmp_path: Path) -> None:
    module = torch.load(zero[2] / MODULE, weights_only=True)
    template = tmp_path / "target.pt"
    torch.save({k: torch.zeros_like(v) for k, v in module.items()}, template)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("source:\n  entry: module\n")
    out = tmp_path / "model.safetensors"
    result = graft_process("convert", zero[2] / "ckpt", template, "-o", out, "-r", recipe)
    assert result.returncode == 0, result.stderr
    written = load_file(out)
    assert sorted(written) == sorted(module)
    assert all(
        torch.equal(written[k], v) and written[k].dtype == v.dtype for k, v in module.items()
    )


def test_inspect_shows_global_shapes_and_the_layout(zero: dict[int, Path]) -> None:
    ckpt = zero[3] / "ckpt"
    result = cli_inspect(ckpt)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:4] == [
        "entry     fp32   candidates: fp32, module",
        "prefix    stripped: -",
        "layout    deepspeed v0.19.8  ZeRO stage 3  world size 2  TP 1  PP 1  entry fp32  "
        "frozen: 2  tied: head.weight -> embed.weight",
    ]
    assert "body.weight         1  [7, 5]   float32    parameter" in lines
    assert "frozen.weight       1  [5, 6]   bfloat16   parameter" in lines
    document = json.loads(cli_inspect(ckpt, "--json").stdout)
    assert document == inspect_source(ckpt)
    assert document["layout"]["zero_stage"] == 3 and document["layout"]["world_size"] == 2
    assert_valid("inspect", document)


def test_a_code_running_model_states_pickle_exits_2_and_never_runs(
    zero: dict[int, Path], tmp_path: Path
) -> None:
    ckpt = tmp_path / "ckpt"
    shutil.copytree(zero[2] / "ckpt", ckpt)
    canary = tmp_path / "canary"
    target = ckpt / "global_step2" / "mp_rank_00_model_states.pt"
    payload = reduce_pickle(os.system, f"touch {shlex.quote(str(canary))}")
    replace_zip_member(target, tmp_path / "evil.pt", "/data.pkl", payload)
    shutil.move(tmp_path / "evil.pt", target)
    out = tmp_path / "out.safetensors"
    result = graft_process("convert", ckpt, _template(zero, tmp_path / "t.pt"), "-o", out)
    assert result.returncode == 2
    assert "unsafe checkpoint: the pickle references" in result.stderr
    inspected = cli_inspect(ckpt)
    assert inspected.returncode == 2
    assert not canary.exists() and not out.exists()
