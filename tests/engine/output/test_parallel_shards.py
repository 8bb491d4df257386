"""Big sharded sources across cores: output shards written side by side (``shard_workers``)
must be the files the one-at-a-time path writes, byte for byte, with the same report."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.options import WriteOptions
from app.engine.pipeline import convert
from app.engine.progress import ProgressEvent
from app.engine.readers import sha256_file, sha256_files
from app.engine.recipe import load_recipe
from app.engine.target import Target

SHARDS = 12
RENAME = {"rename": [{"prefix": "layers.", "to": "model.layers."}]}


def _hf_set(folder: Path) -> dict[str, torch.Tensor]:
    """A Hugging Face set of 12 shards, as ``save_pretrained`` lays it out: 3 tensors of
    mixed dtypes and shapes per shard, and the index."""
    folder.mkdir()
    gen = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    weight_map: dict[str, str] = {}
    for s in range(SHARDS):
        name = f"model-{s + 1:05d}-of-{SHARDS:05d}.safetensors"
        shard = {
            f"layers.{s}.weight": torch.randn(64, 48, generator=gen),
            f"layers.{s}.bias": torch.randn(48, generator=gen).to(torch.bfloat16),
            f"layers.{s}.scale": torch.randint(-9, 9, (5, 3), generator=gen, dtype=torch.int16),
        }
        save_file(shard, str(folder / name))
        weight_map.update(dict.fromkeys(shard, name))
        sd.update(shard)
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    return sd


def _skeleton(sd: dict[str, torch.Tensor]) -> dict[str, Any]:
    tensors = {
        "model." + k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in sd.items()
    }
    return {"schema": "graft.skeleton/v1", "tensors": tensors}


def _run(
    src: Path, sd: dict[str, torch.Tensor], recipe: dict[str, Any], out: Path, workers: int | None
) -> tuple[dict[str, Any], set[str]]:
    """Convert into ``out`` (13 KB shards: ~10 of them); the report and the names of the
    threads that reported writing progress."""
    threads: set[str] = set()

    def progress(event: ProgressEvent) -> None:
        if event.stage == "write" and event.counts is not None:
            threads.add(threading.current_thread().name)

    options = WriteOptions(max_shard_size=13_000, shard_workers=workers)
    with Target.from_skeleton(_skeleton(sd)) as target:
        result = convert(
            src, target, load_recipe(recipe), output=out, options=options, progress=progress
        )
    assert result.ok, result.report
    return result.report, threads


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    """The report without what differs between any two runs (paths, timings)."""
    return {
        "entries": report["entries"],
        "verification": report["verification"],
        "summary": report["summary"],
        "files": report["output"]["files"],
        "copied": report["output"]["copied"],
    }


def test_rename_only_shards_are_written_side_by_side_identically(tmp_path: Path) -> None:
    sd = _hf_set(tmp_path / "src")
    seq_report, seq_threads = _run(tmp_path / "src", sd, RENAME, tmp_path / "seq", 1)
    par_report, par_threads = _run(tmp_path / "src", sd, RENAME, tmp_path / "par", 4)

    seq, par = _files(tmp_path / "seq"), _files(tmp_path / "par")
    assert len(seq) - 1 >= 10  # ~10 shards and the index
    assert par == seq  # byte-identical, index included
    assert _comparable(par_report) == _comparable(seq_report)
    assert par_report["output"]["copied"] == len(sd)
    assert par_report["verification"]["equal"] == len(sd)
    # The sequential path wrote on the calling thread; the parallel one on its shard threads.
    assert seq_threads == {threading.current_thread().name}
    assert len(par_threads) > 1 and all(t.startswith("graft-shard") for t in par_threads)
    for name in par:  # and the bytes are the source's tensors under their new names
        if name.endswith(".safetensors"):
            for key, value in load_file(str(tmp_path / "par" / name)).items():
                assert torch.equal(value, sd[key.removeprefix("model.")]), key


def test_a_materialised_tensor_keeps_shards_one_at_a_time(tmp_path: Path) -> None:
    """An op makes a tensor in memory: shards side by side would hold one each, so the
    writer stays sequential (within the memory bound) and the files are the same."""
    sd = _hf_set(tmp_path / "src")
    recipe = {**RENAME, "dtype": "float32"}  # every bf16/int16 tensor is cast: produced
    seq_report, _ = _run(tmp_path / "src", sd, recipe, tmp_path / "seq", 1)
    par_report, par_threads = _run(tmp_path / "src", sd, recipe, tmp_path / "par", 4)

    assert par_report["output"]["materialised"] > 0
    assert _files(tmp_path / "par") == _files(tmp_path / "seq")
    assert _comparable(par_report) == _comparable(seq_report)
    assert par_threads == {threading.current_thread().name}


@pytest.mark.parametrize("workers", [1, 3])
def test_sha256_files_matches_each_file(tmp_path: Path, workers: int) -> None:
    paths = []
    for i, size in enumerate([0, 5, 3 << 20, 1 << 20]):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes(range(256)) * (size // 256) + b"x" * (size % 256))
        paths.append(p)
    assert sha256_files(paths, workers) == [sha256_file(p) for p in paths]
    assert sha256_files(paths[2:3], workers) == [hashlib.sha256(paths[2].read_bytes()).hexdigest()]


def test_verified_shards_go_side_by_side_by_default(tmp_path: Path) -> None:
    """Verified (the default), a rename-only set's shards are written side by side, one per
    CPU, each checked by its own verifier: the files and the report are the one-at-a-time
    path's, and every tensor was compared with its source."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("one CPU: the default is one shard at a time")
    sd = _hf_set(tmp_path / "src")
    seq_report, _ = _run(tmp_path / "src", sd, RENAME, tmp_path / "seq", 1)
    par_report, par_threads = _run(tmp_path / "src", sd, RENAME, tmp_path / "par", None)

    assert _files(tmp_path / "par") == _files(tmp_path / "seq")
    assert _comparable(par_report) == _comparable(seq_report)
    assert par_report["verification"]["equal"] == len(sd)
    assert len(par_threads) > 1 and all(t.startswith("graft-shard") for t in par_threads)
