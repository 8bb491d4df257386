"""Header-only inspection: ``inspect_source`` on a ~2 GB checkpoint versus reading it once.

Writes a ~2 GiB safetensors file and a ~2 GiB torch zip (a few big tensors plus a couple of
hundred small ones, so the header is model-sized) to a temporary directory, then times, in this
process and this run:

- ``inspect_source`` (median of 5);
- reading the whole file once through a 1 MiB buffer (the file is in the page cache after it
  was written, so this is the cheapest way to touch every byte: a conservative baseline);
- the format's own lazy listing: ``safe_open`` + every key's shape, and
  ``torch.load(mmap=True, weights_only=True)``.

It prints seconds and ratios, deletes the files, and is not part of the test suite.

    .venv/bin/python bench/inspect_header.py [--gib 2]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from app.engine.readers import inspect_source

MIB = 1 << 20


def _tensors(gib: float) -> dict[str, torch.Tensor]:
    """Four big float32 tensors and 252 of 1 MiB: ~``gib`` GiB, 256 keys."""
    small = {
        f"blocks.{i // 4}.mlp.fc{i % 4}.weight": torch.full((512, 512), i / 7) for i in range(252)
    }
    big_bytes = int(gib * 1024 * MIB) - 252 * MIB
    rows = big_bytes // 4 // 4 // 4096
    big = {f"embed.{i}.weight": torch.full((rows, 4096), float(i)) for i in range(4)}
    return big | small


def _median(fn: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _read_all(path: Path) -> int:
    buf = bytearray(MIB)
    total = 0
    with path.open("rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def _safe_open_listing(path: Path) -> dict[str, list[int]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118


def _torch_mmap_listing(path: Path) -> dict[str, list[int]]:
    sd = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
    return {k: list(v.shape) for k, v in sd.items()}


def _report(name: str, path: Path, baselines: dict[str, Callable[[], object]]) -> None:
    size = path.stat().st_size
    summary = inspect_source(path)
    assert summary["totals"]["tensors"] == 256, summary["totals"]
    inspect_s = _median(lambda: inspect_source(path), 5)
    print(f"\n{name}: {path.name}, {size / 2**30:.2f} GiB, 256 tensors")
    print(f"  {'inspect_source (median of 5)':<34}{inspect_s * 1e3:9.2f} ms")
    for label, fn in baselines.items():
        base_s = _median(fn, 1 if label.startswith("read") else 3)
        ratio = base_s / inspect_s
        print(f"  {label:<34}{base_s * 1e3:9.2f} ms   baseline / inspect = {ratio:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="approximate file size in GiB")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    try:
        tensors = _tensors(args.gib)
        st_path, zip_path = folder / "model.safetensors", folder / "model.pt"
        start = time.perf_counter()
        save_file(tensors, str(st_path))
        torch.save(tensors, zip_path)
        del tensors
        print(f"wrote both files in {time.perf_counter() - start:.1f} s to {folder}")
        _report(
            "safetensors",
            st_path,
            {
                "read whole file once": lambda: _read_all(st_path),
                "safe_open + every shape": lambda: _safe_open_listing(st_path),
            },
        )
        _report(
            "torch zip",
            zip_path,
            {
                "read whole file once": lambda: _read_all(zip_path),
                "torch.load(mmap=True) + shapes": lambda: _torch_mmap_listing(zip_path),
            },
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
