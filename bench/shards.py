"""Big sharded models across cores: a Hugging Face set of 10+ shards converted with renames.

The set (``--shards`` files, ``--size-gb`` in all, default 10 and 6; fp16, 64 MiB tensors,
distinct random bytes, the index as ``save_pretrained`` writes it) is generated once under
``--dir``. Then, as whole processes, interleaved ``--runs`` times on a warm page cache:

- a durable copy of the same bytes (``cp -r`` then ``sync`` of the copied files);
- ``graft convert`` to HF shards of the same size with a rename recipe, verified (source
  identity, re-read and compare, attestation): by default shards side by side, one per CPU,
  each verified by its own thread beside its copy; and with ``--shard-workers 1`` (one shard
  at a time, its verifier beside the copy, BLAKE3 of the source on the other core);
- the same with ``--no-verify``: shards side by side (its default) and ``--shard-workers 1``.

CPU time is ``wait4``'s rusage of the whole child (every thread: kernel copies, BLAKE3,
sha256). It prints median wall, CPU, CPU/wall (above 1 means more than one core was busy),
the ratio to the durable copy (goal: at most 1.3x, with CPU/wall above 1.5), the CPU of the
busiest thread and the floor it and CPU / cores put under the wall time on idle cores (on a
shared machine the wall column measures the neighbours too), and peak RSS.
``--base DIR`` runs the verified default a second time with the code under DIR (a worktree
of main), interleaved, so before and after share one run; ``--json FILE`` also writes the
rows for ``bench/table.py``.

    .venv/bin/python bench/shards.py [--size-gb 6] [--shards 10] [--runs 1] [--dir DIR]
        [--base DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.convert import GRAFT, Sample, median_of, run_once  # noqa: E402
from bench.rows import DURABLE, BenchRow, write_rows  # noqa: E402

TENSOR = 64 << 20  # bytes per tensor: 32 Mi fp16 values
ROWS, COLS = 8192, 4096


def _write_shard(path: Path, names: list[str], seed: int) -> None:
    """A safetensors file of ``names``, each a distinct fp16 tensor of random bytes."""
    header: dict[str, object] = {"__metadata__": {"format": "pt"}}
    for i, name in enumerate(names):
        header[name] = {
            "dtype": "F16",
            "shape": [ROWS, COLS],
            "data_offsets": [i * TENSOR, (i + 1) * TENSOR],
        }
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    block = bytearray(os.urandom(TENSOR))
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for i in range(len(names)):
            block[:16] = struct.pack("<QQ", seed, i)  # every tensor's bytes differ
            f.write(block)


def prepare(folder: Path, size_gb: float, shards: int) -> tuple[Path, Path, Path, int]:
    """The HF set (generated once), the target skeleton, the recipe, and the shard size."""
    per_shard = max(1, round(size_gb * 1e9 / TENSOR / shards))
    source = folder / f"hf-{shards}x{per_shard}"
    count = shards * per_shard
    names = [f"layers.{i}.weight" for i in range(count)]
    index_path = source / "model.safetensors.index.json"
    if not index_path.is_file():
        source.mkdir(parents=True, exist_ok=True)
        weight_map = {}
        for s in range(shards):
            shard = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = names[s * per_shard : (s + 1) * per_shard]
            _write_shard(source / shard, part, s)
            weight_map.update(dict.fromkeys(part, shard))
        index = {"metadata": {"total_size": count * TENSOR}, "weight_map": weight_map}
        index_path.write_text(json.dumps(index, indent=2))
    skeleton = folder / f"target-{count}.json"
    tensors = {f"model.{n}": {"shape": [ROWS, COLS], "dtype": "float16"} for n in names}
    skeleton.write_text(json.dumps({"schema": "graft.skeleton/v1", "tensors": tensors}))
    recipe = folder / "recipe.yaml"
    recipe.write_text("version: 1\nrename:\n  - {prefix: 'layers.', to: 'model.layers.'}\n")
    return source, skeleton, recipe, per_shard * TENSOR


VERIFIED = "graft convert (verified), default: shards side by side"
NO_VERIFY = "graft convert --no-verify, default: shards side by side"
COPY = "durable copy (cp -r + sync)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-gb", type=float, default=6.0)
    parser.add_argument("--shards", type=int, default=10)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench-shards")
    parser.add_argument("--base", type=Path, default=None, help="baseline code to compare")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    source, skeleton, recipe, shard_bytes = prepare(args.dir, args.size_gb, args.shards)
    out = args.dir / "out"
    size = sum(p.stat().st_size for p in source.iterdir())
    for p in source.iterdir():  # warm the page cache
        with p.open("rb") as f:
            while f.read(1 << 24):
                pass
    graft = [*GRAFT, "convert", str(source), str(skeleton), "-r", str(recipe)]
    graft += ["-o", str(out / "hf"), "--max-shard-size", str(shard_bytes + (1 << 20))]
    durable = f'cp -r "{source}" "{out}/copy" && sync "{out}"/copy/*'
    here = (ROOT, {**os.environ, "PYTHONPATH": str(ROOT)})
    commands: dict[str, tuple[list[str], tuple[Path, dict[str, str]]]] = {
        COPY: (["sh", "-c", durable], here),
        VERIFIED: (graft, here),
        "graft convert (verified), --shard-workers 1": ([*graft, "--shard-workers", "1"], here),
        NO_VERIFY: ([*graft, "--no-verify"], here),
        "graft convert --no-verify, --shard-workers 1": (
            [*graft, "--no-verify", "--shard-workers", "1"], here
        ),
    }  # fmt: skip
    if args.base is not None:  # main's code: the same command lines, its own defaults
        base = (args.base, {**os.environ, "PYTHONPATH": str(args.base)})
        commands[f"[base] {VERIFIED.split(',')[0]}, default"] = (graft, base)
    samples: dict[str, list[Sample]] = {k: [] for k in commands}
    for _ in range(args.runs):
        for label, (cmd, (cwd, env)) in commands.items():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            samples[label].append(run_once(cmd, cwd, env, threads=label != COPY))
    shutil.rmtree(out, ignore_errors=True)
    _print(samples, size, args.shards, args.runs)
    write_rows(args.json, _rows(samples, size, args.shards, args.runs))


def _rows(samples: dict[str, list[Sample]], size: int, shards: int, runs: int) -> list[BenchRow]:
    """The rows for bench/table.py: every Graft row against the durable copy; the goal (at
    most 1.3x, both cores busy) is the verified default's."""
    med = functools.partial(median_of, samples)
    note = f"HF set, {shards} shards, {size / 1e9:.2f} GB fp16"
    rows = []
    for label in samples:
        if label == COPY:
            continue
        goal = label == VERIFIED
        rows.append(
            BenchRow(
                group="shards", row=label, wall=med(label, "wall"), baseline=DURABLE,
                baseline_wall=med(COPY, "wall"), runs=runs, cpu=med(label, "cpu"),
                rss=int(med(label, "rss")), goal_ratio=1.3 if goal else None,
                goal_cpu_per_wall=1.5 if goal else None,
                note=f"{note}; CPU floor "
                f"{_floor(med(label, 'cpu'), med(label, 'longest_thread')):.1f} s",
            )
        )  # fmt: skip
    return rows


def _print(samples: dict[str, list[Sample]], size: int, shards: int, runs: int) -> None:
    med = functools.partial(median_of, samples)

    durable = med(COPY, "wall")
    load = os.getloadavg()
    print(
        f"HF set: {shards} shards, {size / 1e9:.2f} GB (fp16, 64 MiB tensors); "
        f"{os.cpu_count()} cores; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"warm page cache; {runs} run(s), median"
    )
    print(
        "| command | wall s | CPU s | CPU / wall | x durable | busiest thread CPU s | "
        "CPU floor s | peak RSS MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for label in samples:
        wall, cpu, rss = med(label, "wall"), med(label, "cpu"), med(label, "rss")
        busiest = med(label, "longest_thread")
        print(
            f"| {label} | {wall:.2f} | {cpu:.2f} | {cpu / wall:.2f} | {wall / durable:.2f} | "
            f"{busiest:.2f} | {_floor(cpu, busiest):.2f} | {rss / 1e6:.0f} |"
        )
    print(
        "busiest thread: the CPU of the process's busiest thread; CPU floor: the "
        "larger of it and CPU / cores, the least wall time the work could take on idle cores "
        "(load-independent, unlike the wall column on a shared machine)"
    )


def _floor(cpu: float, busiest: float) -> float:
    """The least wall time the process's work could take on idle cores."""
    return max(cpu / (os.cpu_count() or 1), busiest)


if __name__ == "__main__":
    main()
