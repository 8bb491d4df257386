"""``graft inspect``: ``--json`` is exactly ``inspect_source``; the text view groups and totals."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from app.cli import cli
from app.engine.readers import inspect_source
from tests.fixtures import cli_inspect, save_hf_sharded_safetensors, tiny_state_dict


def _resnet_like(path: Path) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {"conv1.weight": torch.randn(4, 3, 3, 3)}
    sd |= {f"bn1.{s}": torch.ones(4) for s in ("weight", "bias", "running_mean", "running_var")}
    sd["bn1.num_batches_tracked"] = torch.tensor(7)
    for layer, block, conv in itertools.product((1, 2), range(3), (1, 2)):
        sd[f"layer{layer}.{block}.conv{conv}.weight"] = torch.randn(4, 4, 1, 1)
        sd[f"layer{layer}.{block}.conv{conv}.bias"] = torch.zeros(4)
    sd["fc.weight"], sd["fc.bias"] = torch.randn(10, 4), torch.zeros(10)
    torch.save({"module." + k: v for k, v in sd.items()}, path)
    return sd


def test_json_output_equals_inspect_source(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    _resnet_like(path)
    result = cli_inspect(path, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert json.loads(result.stdout) == inspect_source(path)


def test_text_view_groups_keys_and_totals(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pt"
    sd = _resnet_like(path)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "source    resnet.pt  (torch-zip)"
    assert lines[1] == "entry     (root: flat state dict)"
    assert lines[2] == "prefix    stripped: module."
    assert sum(t.numel() for t in sd.values()) == 415
    assert sum(t.numel() * t.element_size() for t in sd.values()) == 1664
    # buffers: bn1.running_{mean,var} (4 each) and bn1.num_batches_tracked (1)
    assert lines[3] == (
        "tensors   32  elements 415  bytes 1.6 KiB  (parameters 29 / 406, buffers 3 / 9)"
    )
    assert lines[4] == "dtypes    float32 31, int64 1"
    # one line per shape, keys grouped within it; every column as wide as its widest cell
    assert lines[6:] == [
        "key                                  n  shape         dtype      kind",
        "conv1.weight                         1  [4, 3, 3, 3]  float32    parameter",
        "bn1.{weight,bias}                    2  [4]           float32    parameter",
        "bn1.running_{mean,var}               2  [4]           float32    buffer",
        "bn1.num_batches_tracked              1  []            int64      buffer",
        "layer{1,2}.{0..2}.conv{1,2}.weight  12  [4, 4, 1, 1]  float32    parameter",
        "layer{1,2}.{0..2}.conv{1,2}.bias    12  [4]           float32    parameter",
        "fc.weight                            1  [10, 4]       float32    parameter",
        "fc.bias                              1  [10]          float32    parameter",
    ]


def test_text_view_aligns_long_grouped_keys(tmp_path: Path) -> None:
    path = tmp_path / "long.pt"
    long = "encoder." * 12
    torch.save({f"{long}blocks.{i}.weight": torch.zeros(3, i + 1) for i in range(2)} |
               {"x": torch.zeros(1)}, path)  # fmt: skip
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    table = result.stdout.splitlines()[6:]
    assert len(table) == 4 and len(table[1]) > 100
    # The shape column starts at the same place on every line, the longest key included.
    starts = {line.index("[") for line in table[1:]}
    assert len(starts) == 1 and table[0].index("shape") == starts.pop()


def test_text_view_of_a_lightning_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    sd = {f"model.{k}": v for k, v in tiny_state_dict().items()}
    torch.save({"state_dict": sd, "pytorch-lightning_version": "2.4.0", "epoch": 3}, path)
    result = CliRunner().invoke(cli, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1] == "entry     state_dict   candidates: state_dict"
    assert lines[2] == "prefix    stripped: -   shared by every key: model. (Lightning)"
    assert lines[3] == "ignored   pytorch-lightning_version (str = 2.4.0), epoch (int = 3)"


def test_entry_option(tmp_path: Path) -> None:
    path = tmp_path / "ema.pt"
    torch.save({"model": tiny_state_dict(0), "model_ema": tiny_state_dict(1)}, path)
    runner = CliRunner()
    auto = runner.invoke(cli, ["inspect", str(path), "--json"])
    chosen = runner.invoke(cli, ["inspect", str(path), "--json", "--entry", "model"])
    assert auto.exit_code == 0 and chosen.exit_code == 0
    assert json.loads(auto.stdout)["entry"] == "model_ema"
    assert json.loads(chosen.stdout) == inspect_source(path, entry="model")
    assert json.loads(chosen.stdout)["entry"] == "model"


def test_sharded_set_given_as_its_files(tmp_path: Path) -> None:
    index = save_hf_sharded_safetensors(tiny_state_dict(), tmp_path / "set", shards=2)
    shards = sorted(index.parent.glob("*.safetensors"))
    result = CliRunner().invoke(cli, ["inspect", "--json", str(index), *map(str, shards)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary == inspect_source([index, *shards])
    assert summary["format"] == "hf-sharded"
    assert summary["paths"] == [str(index), *map(str, shards)]
    assert summary["totals"]["tensors"] == 12
