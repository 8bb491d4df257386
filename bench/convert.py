"""Whole-process conversion benchmark: ``graft convert`` against ``cp`` and the naive recipe.

Generates synthetic checkpoints of realistic shape once (cached under ``--dir``):

- ``resnet50``: a ResNet-50-like torch zip of ~100 MB with BatchNorm buffers;
- ``transformer``: a ~2 GB fp32 transformer, as a torch zip and as safetensors;
- ``big``: a ~6 GB fp16 transformer (only with ``--big``).

Then runs every command as a whole process, interleaved (A B C … A B C …) so drift hits all
alike, and prints, per row, the median wall time, peak RSS, peak anonymous RSS (RSS alone
misleads on mmap paths: mapped file pages count in it) and the ratio of medians to ``cp`` of
the same file in the same run. The page cache is warm: every file is read once before timing.

    .venv/bin/python bench/convert.py [--runs 3] [--big] [--dir data/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
GRAFT = [sys.executable, "-c", "from app.cli import main; main()"]
NAIVE = """
import sys, torch
from safetensors.torch import load_file, save_file
src, out = sys.argv[1], sys.argv[2]
if src.endswith(".safetensors"):
    sd = load_file(src)
else:
    sd = torch.load(src, map_location="cpu", weights_only=True)
save_file({"model." + k: v.contiguous() for k, v in sd.items()}, out)
"""


def _resnet50() -> dict[str, torch.Tensor]:
    """ResNet-50 shapes: 161 conv/fc weights, 53 BatchNorms with their 5 tensors each."""
    sd: dict[str, torch.Tensor] = {}
    gen = torch.Generator().manual_seed(0)

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=gen) * 0.05

    def bn(name: str, c: int) -> None:
        sd[f"{name}.weight"] = torch.rand(c, generator=gen) + 0.5
        sd[f"{name}.bias"] = torch.randn(c, generator=gen) * 0.1
        sd[f"{name}.running_mean"] = torch.randn(c, generator=gen) * 0.1
        sd[f"{name}.running_var"] = torch.rand(c, generator=gen) + 0.5
        sd[f"{name}.num_batches_tracked"] = torch.tensor(1000)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for layer, (blocks, width) in enumerate([(3, 64), (4, 128), (6, 256), (3, 512)], start=1):
        for b in range(blocks):
            p = f"layer{layer}.{b}"
            conv(f"{p}.conv1", width, cin, 1)
            bn(f"{p}.bn1", width)
            conv(f"{p}.conv2", width, width, 3)
            bn(f"{p}.bn2", width)
            conv(f"{p}.conv3", width * 4, width, 1)
            bn(f"{p}.bn3", width * 4)
            if b == 0:
                conv(f"{p}.downsample.0", width * 4, cin, 1)
                bn(f"{p}.downsample.1", width * 4)
            cin = width * 4
    sd["fc.weight"] = torch.randn(1000, 2048, generator=gen) * 0.01
    sd["fc.bias"] = torch.zeros(1000)
    return sd


def _transformer(
    layers: int, width: int, vocab: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)

    def w(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    sd = {"embed.weight": w(vocab, width), "pos_embed": w(1, 1025, width)}
    for i in range(layers):
        p = f"blocks.{i}"
        sd |= {
            f"{p}.norm1.weight": torch.ones(width, dtype=dtype),
            f"{p}.norm1.bias": torch.zeros(width, dtype=dtype),
            f"{p}.attn.qkv.weight": w(3 * width, width),
            f"{p}.attn.qkv.bias": torch.zeros(3 * width, dtype=dtype),
            f"{p}.attn.proj.weight": w(width, width),
            f"{p}.norm2.weight": torch.ones(width, dtype=dtype),
            f"{p}.mlp.fc1.weight": w(4 * width, width),
            f"{p}.mlp.fc2.weight": w(width, 4 * width),
        }
    sd["head.weight"] = w(1000, width)
    return sd


def _skeleton(sd: dict[str, torch.Tensor], path: Path, *, adapt_key: str | None = None) -> None:
    tensors = {}
    for k, v in sd.items():
        shape = list(v.shape)
        if k == adapt_key:
            shape[1] += 1  # one more input channel
        tensors[f"model.{k}"] = {"shape": shape, "dtype": str(v.dtype).removeprefix("torch.")}
    path.write_text(json.dumps({"schema": "graft.skeleton/v1", "tensors": tensors}))


def prepare(folder: Path, big: bool) -> dict[str, dict[str, Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    sets = {
        "resnet50": _resnet50,
        "transformer": lambda: _transformer(40, 1024, 32000, torch.float32),
    }
    if big:
        sets["big-fp16"] = lambda: _transformer(64, 2048, 32000, torch.float16)
    out: dict[str, dict[str, Path]] = {}
    for name, make in sets.items():
        files = {
            "zip": folder / f"{name}.pt",
            "safetensors": folder / f"{name}.safetensors",
            "target": folder / f"{name}.target.json",
            "adapt_target": folder / f"{name}.adapt.json",
            "recipe": folder / "rename.yaml",
            "adapt_recipe": folder / f"{name}.adapt.yaml",
        }
        if not all(p.exists() for p in files.values()):
            print(f"generating {name} …", file=sys.stderr)
            sd = make()
            torch.save(sd, files["zip"])
            save_file(sd, str(files["safetensors"]))
            first = next(k for k, v in sd.items() if v.dim() >= 2 and k != "pos_embed")
            _skeleton(sd, files["target"])
            _skeleton(sd, files["adapt_target"], adapt_key=first)
            files["recipe"].write_text('version: 1\nrename: [{prefix: "", to: "model."}]\n')
            files["adapt_recipe"].write_text(
                'version: 1\nrename: [{prefix: "", to: "model."}]\n'
                f'adapt: [{{match: "model.{first}", op: channels, fill: zeros}}]\n'
            )
            del sd
        out[name] = files
    return out


@dataclass
class Sample:
    wall: float
    rss: int  # peak RSS (VmHWM), bytes
    anon: int  # peak anonymous RSS (RssAnon), bytes


_FIELDS = {"VmHWM:": "rss", "RssAnon:": "anon"}


def run_once(cmd: list[str]) -> Sample:
    """Run ``cmd`` as a whole process; peaks are sampled from /proc every 2 ms.

    ``ru_maxrss`` is not used: it keeps the forking parent's high-water mark across exec.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = {"rss": 0, "anon": 0}
    done = threading.Event()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                text = status.read_text()
            except (FileNotFoundError, ProcessLookupError):
                return
            for line in text.splitlines():
                name = _FIELDS.get(line.split(":", 1)[0] + ":")
                if name:
                    peak[name] = max(peak[name], int(line.split()[1]) * 1024)
            done.wait(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.decode()}")
    return Sample(wall, peak["rss"], peak["anon"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="also a ~6 GB fp16 checkpoint")
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--only", default=None, help="run only this checkpoint set")
    args = parser.parse_args()
    sets = prepare(args.dir, args.big)
    out_dir = args.dir / "out"
    out_dir.mkdir(exist_ok=True)
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"python {platform.python_version()}; warm page cache; {args.runs} runs, median"
    )
    for name, f in sets.items():
        if args.only and name != args.only:
            continue
        out = out_dir / "out.safetensors"
        copy = out_dir / "copy"

        def graft(command: str, source: Path, *extra: str) -> list[str]:
            return [*GRAFT, command, str(source), *extra]

        to = [str(f["target"]), "-r", str(f["recipe"])]
        rows: dict[str, list[str]] = {
            "cp (baseline)": ["cp", str(f["zip"]), str(copy)],
            "cp + sync of the copy": ["sh", "-c", f'cp "{f["zip"]}" "{copy}" && sync "{copy}"'],
            "naive load+rename+save": [sys.executable, "-c", NAIVE, str(f["zip"]), str(out)],
            "graft convert rename-only, zip -> st": graft("convert", f["zip"], *to, "-o", str(out)),
            "  same, --no-verify": graft("convert", f["zip"], *to, "-o", str(out), "--no-verify"),
            "graft convert rename-only, st -> st": graft(
                "convert", f["safetensors"], *to, "-o", str(out)
            ),
            "graft convert, one adapted tensor": graft(
                "convert", f["zip"], str(f["adapt_target"]), "-r", str(f["adapt_recipe"]),
                "-o", str(out),
            ),
            "graft inspect": graft("inspect", f["zip"]),
            "graft plan": graft("plan", f["zip"], *to),
        }  # fmt: skip
        for path in (f["zip"], f["safetensors"]):  # warm the page cache
            with path.open("rb") as fh:
                while fh.read(1 << 24):
                    pass
        samples: dict[str, list[Sample]] = {k: [] for k in rows}
        for _ in range(args.runs):
            for label, cmd in rows.items():
                samples[label].append(run_once(cmd))
                for leftover in (out, copy):
                    leftover.unlink(missing_ok=True)
        size = f["zip"].stat().st_size
        base = statistics.median(s.wall for s in samples["cp (baseline)"])
        print(f"\n{name}: {size / 1e6:.0f} MB torch zip")
        columns = ("wall s", "x cp", "x cp+sync", "peak RSS MB", "peak anon MB")
        print(f"| {'command':<40} | " + " | ".join(columns) + " |")
        print(f"|{'-' * 42}|" + "|".join("-" * (len(c) + 2) for c in columns) + "|")
        synced = statistics.median(s.wall for s in samples["cp + sync of the copy"])
        for label, ss in samples.items():
            wall = statistics.median(s.wall for s in ss)
            rss = statistics.median(s.rss for s in ss) / 1e6
            anon = statistics.median(s.anon for s in ss) / 1e6
            print(
                f"| {label:<40} | {wall:6.2f} | {wall / base:4.2f} | {wall / synced:9.2f} "
                f"| {rss:11.0f} | {anon:12.0f} |"
            )
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
