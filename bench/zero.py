"""ZeRO-3 conversion against DeepSpeed's own ``zero_to_fp32``: wall time and peak RSS.

A ZeRO stage 3 checkpoint (``--size-mb`` of fp32 master weights, default 256: Linear layers of
64 MiB, bf16 training, AdamW, so the optimizer files hold ~3x that) is written once under
``--dir`` by DeepSpeed itself: 2 gloo ranks on the CPU, in the DeepSpeed venv
(``make deepspeed-venv``), two optimizer steps, ``save_checkpoint``. Then, as whole
processes, interleaved ``--runs`` times on a warm page cache:

- DeepSpeed: ``get_fp32_state_dict_from_zero_checkpoint`` then ``torch.save`` of the merged
  fp32 state dict (what its ``zero_to_fp32.py`` does for a ``.bin``), in its own venv;
- ``graft convert`` of the checkpoint folder into a ``.pt`` (the same format) and into
  safetensors, verified (the default).

It prints median wall, CPU, peak RSS and their ratios to DeepSpeed's. Graft reads each
tensor's partitions straight from the rank files into the merged tensor; DeepSpeed loads every
rank's optimizer state whole (issue 22: memory is the point).

    .venv/bin/python bench/zero.py [--size-mb 256] [--runs 1] [--dir data/bench-zero]
        [--json FILE]

This file imports nothing beyond the standard library at module level: the DeepSpeed venv
runs it (``save`` and ``merge``) to write the checkpoint and to time its own merge.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WIDTH = 4096  # 64 MiB fp32 per Linear weight
DEEPSPEED_VENV = Path(
    os.environ.get("GRAFT_TEST_DEEPSPEED_VENV", Path.home() / ".cache/graft/deepspeed-0.19.8")
).expanduser()
DEEPSPEED_PYTHON = DEEPSPEED_VENV / "bin" / "python"
DEEPSPEED = "DeepSpeed get_fp32_state_dict_from_zero_checkpoint + torch.save"
_ENV = {"OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "DS_BUILD_OPS": "0", "PYTHONPATH": ""}


def _layers(size_mb: int) -> int:
    return max(1, size_mb // 64)


def _save(layers: int, out: str) -> None:
    """In the DeepSpeed venv, under ``torch.distributed.run`` (2 ranks): train two steps and
    ``save_checkpoint`` into ``out/ckpt`` (tag ``global_step2``)."""
    import importlib

    import deepspeed
    import torch

    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None  # no C++ build
    deepspeed.init_distributed(dist_backend="gloo")
    torch.manual_seed(0)
    # Odd bias sizes: the flat partitions are padded, as in real checkpoints.
    widths = [WIDTH, *(WIDTH - i for i in range(layers))]
    model = torch.nn.Sequential(*(torch.nn.Linear(a, b) for a, b in itertools.pairwise(widths)))
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "bf16": {"enabled": True},
        "zero_optimization": {"stage": 3},
        "steps_per_print": 1000,
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    for _ in range(2):
        loss = engine(torch.randn(2, WIDTH, dtype=torch.bfloat16)).float().pow(2).mean()
        engine.backward(loss)
        engine.step()
    engine.save_checkpoint(str(Path(out) / "ckpt"), tag="global_step2")
    torch.distributed.barrier()


def _merge(ckpt: str, out: str) -> None:
    """In the DeepSpeed venv: DeepSpeed's own merge, saved as torch does."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    torch.save(get_fp32_state_dict_from_zero_checkpoint(ckpt), out)


def prepare(folder: Path, size_mb: int) -> tuple[Path, Path]:
    """The checkpoint folder (written once by DeepSpeed) and the skeleton it fits."""
    layers = _layers(size_mb)
    root = folder / f"zero3-{layers}x64MiB"
    ckpt = root / "ckpt"
    if not (ckpt / "latest").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        cmd = [str(DEEPSPEED_PYTHON), "-m", "torch.distributed.run", "--standalone",
               "--nproc-per-node=2", __file__, "save", str(layers), str(root)]  # fmt: skip
        print(f"writing a ZeRO-3 checkpoint of {layers} layers with DeepSpeed …", file=sys.stderr)
        done = subprocess.run(cmd, env={**os.environ, **_ENV}, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"DeepSpeed failed:\n{done.stdout[-2000:]}{done.stderr[-4000:]}")
    tensors, width = {}, WIDTH
    for i in range(layers):
        tensors[f"{i}.weight"] = {"shape": [WIDTH - i, width], "dtype": "float32"}
        tensors[f"{i}.bias"] = {"shape": [WIDTH - i], "dtype": "float32"}
        width = WIDTH - i
    skeleton = root / "target.json"
    skeleton.write_text(json.dumps({"schema": "graft.skeleton/v1", "tensors": tensors}))
    return ckpt, skeleton


def main() -> None:
    sys.path.insert(0, str(ROOT))
    from bench.convert import GRAFT, Sample, median_of, run_once
    from bench.rows import write_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench-zero")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    if not DEEPSPEED_PYTHON.exists():
        raise SystemExit(f"no DeepSpeed venv at {DEEPSPEED_VENV}: run `make deepspeed-venv`")
    ckpt, skeleton = prepare(args.dir, args.size_mb)
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    for p in ckpt.rglob("*"):  # warm the page cache
        if p.is_file():
            p.read_bytes()
    out = args.dir / "out"
    graft = [*GRAFT, "convert", str(ckpt), str(skeleton)]
    commands = {
        DEEPSPEED: [str(DEEPSPEED_PYTHON), __file__, "merge", str(ckpt), str(out / "ds.pt")],
        "graft convert -> .pt (verified)": [*graft, "-o", str(out / "graft.pt")],
        "graft convert -> safetensors (verified)": [*graft, "-o", str(out / "graft.safetensors")],
    }
    env = {**os.environ, **_ENV}
    samples: dict[str, list[Sample]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for label, cmd in commands.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            samples[label].append(run_once(cmd, ROOT, env if label == DEEPSPEED else None))
    shutil.rmtree(out, ignore_errors=True)
    med = functools.partial(median_of, samples)
    weights = sum(4 * v["shape"][0] * (v["shape"][1] if len(v["shape"]) > 1 else 1)
                  for v in json.loads(skeleton.read_text())["tensors"].values())  # fmt: skip
    print(
        f"ZeRO-3 checkpoint: {size / 1e9:.2f} GB on disk (2 ranks), {weights / 1e6:.0f} MB of "
        f"fp32 weights; {os.cpu_count()} cores; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {args.runs} run(s), median"
    )
    print("| command | wall s | CPU s | x DeepSpeed wall | peak RSS MB | x DeepSpeed RSS |")
    print("|---|---|---|---|---|---|")
    for label in samples:
        wall, cpu, rss = med(label, "wall"), med(label, "cpu"), med(label, "rss")
        print(f"| {label} | {wall:.2f} | {cpu:.2f} | {wall / med(DEEPSPEED, 'wall'):.2f} | "
              f"{rss / 1e6:.0f} | {rss / med(DEEPSPEED, 'rss'):.2f} |")  # fmt: skip
    write_rows(args.json, _rows(samples, args.runs, weights))


def _rows(samples: dict[str, list[Any]], runs: int, weights: int) -> list[Any]:
    """Graft's rows against DeepSpeed's merge of the same run; the goal (issue 22, as read
    here): less peak memory than DeepSpeed's."""
    from bench.convert import median_of
    from bench.rows import BenchRow

    med = functools.partial(median_of, samples)
    theirs = f"DeepSpeed's RSS {med(DEEPSPEED, 'rss') / 1e6:.0f} MB"
    return [
        BenchRow(
            group="zero", row=label, wall=med(label, "wall"), baseline="DeepSpeed zero_to_fp32",
            baseline_wall=med(DEEPSPEED, "wall"), runs=runs, cpu=med(label, "cpu"),
            rss=int(med(label, "rss")), goal_rss=int(med(DEEPSPEED, "rss")),
            note=f"{weights / 1e6:.0f} MB fp32; {theirs}",
        )
        for label in samples
        if label != DEEPSPEED
    ]  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["save"]:
        _save(int(sys.argv[2]), sys.argv[3])
    elif sys.argv[1:2] == ["merge"]:
        _merge(sys.argv[2], sys.argv[3])
    else:
        main()
