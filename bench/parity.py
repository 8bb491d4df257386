"""Parity's cost against the conversion's own (issue 21: at most 2x on CPU), on the ~2 GB
fp32 transformer of ``bench/convert.py``.

Converts ``transformer.safetensors`` into its ``model.``-prefixed skeleton twice, without
and with ``--reference``, as whole processes, and prints the medians and their ratio.

    .venv/bin/python bench/parity.py [--runs 3] [--dir data/bench]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

LAYERS, WIDTH, VOCAB = 40, 1024, 32000


class Block(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(width, 3 * width)
        self.attn.proj = nn.Linear(width, width, bias=False)
        self.norm2 = nn.LayerNorm(width, bias=False)
        self.mlp = nn.Sequential()
        self.mlp.fc1 = nn.Linear(width, 4 * width, bias=False)
        self.mlp.fc2 = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, w = x.shape
        q, k, v = self.attn.qkv(self.norm1(x)).chunk(3, dim=-1)
        heads = [t.view(b, s, 16, w // 16).transpose(1, 2) for t in (q, k, v)]
        out = nn.functional.scaled_dot_product_attention(*heads)
        x = x + self.attn.proj(out.transpose(1, 2).reshape(b, s, w))
        return x + self.mlp.fc2(nn.functional.gelu(self.mlp.fc1(self.norm2(x))))


class Transformer(nn.Module):
    """The layout of bench/convert.py's ``transformer`` (its keys, shapes and dtypes)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1025, WIDTH))
        self.blocks = nn.ModuleList(Block(WIDTH) for _ in range(LAYERS))
        self.head = nn.Linear(WIDTH, 1000, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids) + self.pos_embed[:, : ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        out: torch.Tensor = self.head(x[:, 0])
        return out


def prefixed() -> nn.Module:
    """The target: the same network under ``model.``."""
    root = nn.Module()
    root.model = Transformer()
    root.forward = root.model.forward  # type: ignore[method-assign]
    return root


def _time(argv: list[str]) -> float:
    started = time.perf_counter()
    run = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(run.stderr[-2000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench")
    args = parser.parse_args()
    from bench.convert import prepare

    files = prepare(args.dir, big=False)["transformer"]
    graft = [sys.executable, "-c", "from app.cli import main; main()"]
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "out.safetensors")
        base = [*graft, "convert", str(files["safetensors"]), str(files["target"]), "-r",
                str(files["recipe"]), "-o", out, "--device", "cpu"]  # fmt: skip
        parity = [*base, "--reference", "bench.parity:Transformer", "--target-module",
                  "bench.parity:prefixed", "--inputs",
                  json.dumps([{"shape": [2, 16], "dtype": "int64", "high": VOCAB}])]  # fmt: skip
        plain_s, parity_s = [], []
        for _ in range(args.runs):
            plain_s.append(_time(base))
            parity_s.append(_time(parity))
    plain, with_parity = statistics.median(plain_s), statistics.median(parity_s)
    print(f"convert            {plain:6.2f} s (median of {args.runs})")
    print(f"convert + parity   {with_parity:6.2f} s")
    extra = with_parity - plain
    print(f"parity alone       {extra:6.2f} s = {extra / plain:.2f}x the conversion")


if __name__ == "__main__":
    main()
