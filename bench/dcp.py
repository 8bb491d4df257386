"""DCP benchmark: a checkpoint saved by 4 ranks to Hugging Face safetensors shards, renamed.

The checkpoint (``--size-mb``, default 2048) is written once by torch itself under ``--dir``:
4 gloo processes on the CPU, each saving its ``Shard(0)`` slice of every tensor (float32,
64 MiB tensors, flat keys as torchtitan writes them) with ``torch.distributed.checkpoint``.
Then, as whole processes, interleaved ``--runs`` times on a warm page cache:

- ``graft convert`` to HF shards with a rename recipe (verified, and with ``--no-verify``);
- a durable copy of the same bytes (``cp -r`` then ``sync`` of the copied files);
- the naive path: ``dcp_to_torch_save``, then ``torch.load``, rename, ``save_file``.

It prints the median wall time, its ratio to the durable copy and to the naive path, and the
peak RSS against the largest tensor (goal: at most 1.5x the durable copy, and peak RSS at
most the largest tensor + 300 MB).

    .venv/bin/python bench/dcp.py [--size-mb 2048] [--runs 1] [--dir data/bench-dcp]
        [--json FILE] [--base DIR]

``--base DIR`` runs both Graft rows a second time with the code under DIR (e.g. a worktree of
main), interleaved with this tree's, so before and after share one run.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.convert import GRAFT, RowFilter, Sample, median_of, run_once  # noqa: E402
from bench.rows import DURABLE, BenchRow, write_rows  # noqa: E402

COPY = "durable copy (cp -r + sync)"
TENSOR_ROWS, COLS = 16384, 1024  # 64 MiB of float32 per tensor

SAVE_SCRIPT = """
import sys, torch, torch.distributed as dist, torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
mesh = init_device_mesh("cpu", (world,))
count, rows, cols = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
gen = torch.Generator().manual_seed(rank)
state = {
    f"layers.{i}.weight": DTensor.from_local(
        torch.randn(rows // world, cols, generator=gen), mesh, [Shard(0)], run_check=False
    )
    for i in range(count)
}
dcp.save(state, checkpoint_id=sys.argv[1])
dist.barrier()  # no rank tears gloo down while another still talks to it
dist.destroy_process_group()
"""

NAIVE_SCRIPT = """
import sys, torch
from safetensors.torch import save_file
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
src, tmp, out = sys.argv[1], sys.argv[2], sys.argv[3]
dcp_to_torch_save(src, tmp)
sd = torch.load(tmp, map_location="cpu", weights_only=True)
save_file({"model." + k: v.contiguous() for k, v in sd.items()}, out)
"""


def prepare(folder: Path, size_mb: int) -> tuple[Path, Path, Path]:
    """The DCP checkpoint (saved once, by 4 ranks), the target skeleton and the recipe."""
    count = max(1, size_mb // 64)
    source = folder / f"dcp-{count * 64}mb"
    folder.mkdir(parents=True, exist_ok=True)
    if not (source / ".metadata").is_file():
        script = folder / "save_dcp.py"
        script.write_text(SAVE_SCRIPT)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
        cmd += [str(script), str(source), str(count), str(TENSOR_ROWS), str(COLS)]
        subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    skeleton = folder / f"target-{count}.json"
    tensors = {
        f"model.layers.{i}.weight": {"shape": [TENSOR_ROWS, COLS], "dtype": "float32"}
        for i in range(count)
    }
    skeleton.write_text(json.dumps({"schema": "graft.skeleton/v1", "tensors": tensors}))
    recipe = folder / "recipe.yaml"
    recipe.write_text("version: 1\nrename:\n  - {prefix: 'layers.', to: 'model.layers.'}\n")
    return source, skeleton, recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench-dcp")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--base", type=Path, default=None, help="baseline code to compare")
    args = parser.parse_args()
    source, skeleton, recipe = prepare(args.dir, args.size_mb)
    out = args.dir / "out"
    size = sum(p.stat().st_size for p in source.iterdir())
    for p in source.iterdir():  # warm the page cache
        p.read_bytes()
    graft = [*GRAFT, "convert", str(source), str(skeleton), "-r", str(recipe)]
    graft += ["-o", str(out / "hf"), "--max-shard-size", "1GB"]
    durable = f'cp -r "{source}" "{out}/copy" && sync "{out}"/copy/* "{out}"/copy/.metadata'
    commands = {
        COPY: ["sh", "-c", durable],
        "graft convert -> HF shards": graft,
        "graft convert --no-verify": [*graft, "--no-verify"],
        "naive (dcp_to_torch_save + load + save_file)": [
            sys.executable, "-c", NAIVE_SCRIPT, str(source), str(out / "merged.pt"),
            str(out / "naive.safetensors"),
        ],
    }  # fmt: skip
    rows = RowFilter(None, args.base).expand(commands)
    samples: dict[str, list[Sample]] = {k: [] for k in rows}
    for _ in range(args.runs):
        for label, row in rows.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            samples[label].append(run_once(row.cmd, row.cwd, row.env))
    shutil.rmtree(out, ignore_errors=True)
    _print(samples, size, TENSOR_ROWS * COLS * 4, args.runs)
    write_rows(args.json, _rows(samples, size, TENSOR_ROWS * COLS * 4, args.runs))


def _rows(samples: dict[str, list[Sample]], size: int, largest: int, runs: int) -> list[BenchRow]:
    """The rows for bench/table.py against the durable copy; the goal (at most 1.5x, peak RSS
    at most the largest tensor + 300 MB) is the verified conversion's."""
    med = functools.partial(median_of, samples)
    rows = []
    for label in samples:
        if label == COPY:
            continue
        goal = label == "graft convert -> HF shards"
        rows.append(
            BenchRow(
                group="dcp", row=label, wall=med(label, "wall"), baseline=DURABLE,
                baseline_wall=med(COPY, "wall"), runs=runs, cpu=med(label, "cpu"),
                rss=int(med(label, "rss")), goal_ratio=1.5 if goal else None,
                goal_rss=largest + 300_000_000 if goal else None,
                note=f"{size / 1e9:.2f} GB saved by 4 ranks",
            )
        )  # fmt: skip
    return rows


def _print(samples: dict[str, list[Sample]], size: int, largest: int, runs: int) -> None:
    med = functools.partial(median_of, samples)

    durable = med(COPY, "wall")
    naive = med("naive (dcp_to_torch_save + load + save_file)", "wall")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"DCP checkpoint: {size / 1e9:.2f} GB saved by 4 ranks; largest tensor "
        f"{largest / 1e6:.0f} MB; {os.cpu_count()} cores; load average {load}; warm page "
        f"cache; {runs} run(s), median"
    )
    print(
        "| command | wall s | CPU s | x durable | x naive | peak RSS MB | RSS - largest tensor MB |"
    )
    print("|---|---|---|---|---|---|---|")
    for label in samples:
        wall, cpu, rss = med(label, "wall"), med(label, "cpu"), med(label, "rss")
        print(
            f"| {label} | {wall:.2f} | {cpu:.2f} | {wall / durable:.2f} | {wall / naive:.2f} | "
            f"{rss / 1e6:.0f} | {(rss - largest) / 1e6:.0f} |"
        )


if __name__ == "__main__":
    main()
