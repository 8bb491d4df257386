"""``make bench``: every bench script in one run, then one table of all their rows.

Runs, one after the other, each writing its rows as JSON (``--json``, see bench/rows.py):

- bench/convert.py: rename-only conversions, verified and ``--no-verify``, into each output
  format (safetensors, torch, DCP), against ``cp`` + ``sync`` of the same file;
- bench/dcp.py: a DCP checkpoint saved by 4 ranks to HF shards;
- bench/shards.py: a 10-shard HF set converted across both cores;
- bench/uploads.py: raw, multipart and tus uploads (uncut, cut and resumed), the API end to end;
- bench/zero.py: a ZeRO-3 checkpoint against DeepSpeed's own ``zero_to_fp32``;
- bench/s3_stream.py: S3 to S3, when it exists ("not built" otherwise; a script without
  ``--json`` still runs and prints its own table).

Every ratio is a row's median wall time over its baseline's (a durable copy of the same bytes
unless the row says otherwise), both measured by the same script in the same run,
interleaved. The header says what machine it ran on: CPU model, cores, RAM, kernel, the
filesystem of the data folder and whether it takes reflinks (``cp --reflink=always``).

    .venv/bin/python bench/table.py [--runs 3] [--quick] [--only shards,dcp] [--data data]

``--quick`` runs small sizes (a smoke run, not figures); a script that fails is reported in
the table as failed, and the others still run.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.rows import BenchRow, read_rows  # noqa: E402


@dataclass(frozen=True)
class Script:
    """One bench script: its file, its arguments for a full run and for ``--quick``."""

    group: str
    file: str
    full: tuple[str, ...]
    quick: tuple[str, ...]
    data: str | None  # its data folder under --data (``--dir``), or None


SCRIPTS = (
    Script("convert", "convert.py", ("--no-service",), ("--no-service", "--only", "resnet50"),
           "bench"),
    Script("dcp", "dcp.py", (), ("--size-mb", "256"), "bench-dcp"),
    Script("shards", "shards.py", (), ("--size-gb", "0.7"), "bench-shards"),
    Script("uploads", "uploads.py", (), ("--size-mb", "128"), None),
    Script("zero", "zero.py", (), ("--size-mb", "64"), "bench-zero"),
    Script("s3", "s3_stream.py", (), ("--size-mb", "64"), "bench-s3"),
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--only", default=None, help="these groups only (comma-separated)")
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    args.data.mkdir(parents=True, exist_ok=True)
    machine = machine_lines(args.data)
    print("\n".join(machine), flush=True)
    rows: list[BenchRow] = []
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        for script in SCRIPTS:
            if only is not None and script.group not in only:
                continue
            path = ROOT / "bench" / script.file
            if not path.is_file():
                missing[script.group] = "not built"
                continue
            out = Path(tmp) / f"{script.group}.json"
            cmd = [sys.executable, str(path), *(script.quick if args.quick else script.full)]
            cmd += ["--runs", str(args.runs)]
            rows_out = _takes_json(path)
            if rows_out:
                cmd += ["--json", str(out)]
            if script.data is not None:
                cmd += ["--dir", str(args.data / script.data)]
            elif script.group == "uploads":
                cmd += ["--dir", str(args.data)]
            print(f"\n$ {' '.join(cmd[1:])}", flush=True)
            start = time.perf_counter()
            code = subprocess.run(cmd, cwd=ROOT, check=False).returncode
            took = time.perf_counter() - start
            if code != 0:
                missing[script.group] = f"failed (exit {code} after {took:.0f} s)"
                continue
            if not rows_out or not out.is_file():
                missing[script.group] = "ran, but writes no --json rows: see its own table above"
                continue
            rows += read_rows(out)
    print()
    print("\n".join(machine_lines(args.data)))  # the load average as it ends
    print(render(rows, missing, args.runs))


def _takes_json(script: Path) -> bool:
    """Whether a script's ``--help`` offers ``--json``."""
    done = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, check=False
    )
    return "--json" in done.stdout


def render(rows: list[BenchRow], missing: dict[str, str], runs: int) -> str:
    """The table: one line per row, then one per script that gave none."""
    header = ("group", "row", "median wall s", "baseline (same run)", "ratio", "goal", "met?",
              "CPU/wall", "peak RSS MB", "note")  # fmt: skip
    table = [header]
    for r in rows:
        met = r.met()
        cpw = r.cpu_per_wall
        table.append(
            (r.group, r.row, f"{r.wall:.2f}",
             f"{r.baseline} {r.baseline_wall:.2f} s" if r.baseline_wall > 0 else "-",
             f"{r.ratio:.2f}x" if math.isfinite(r.ratio) else "-", r.goal(),
             "-" if met is None else ("yes" if met else "NO"),
             f"{cpw:.2f}" if cpw is not None else "-",
             f"{r.rss / 1e6:.0f}" if r.rss is not None else "-",
             r.note)
        )  # fmt: skip
    for group, why in missing.items():
        table.append((group, why, "-", "-", "-", "-", "-", "-", "-", ""))
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    lines = []
    for i, row in enumerate(table):
        lines.append(
            "| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
        )
        if i == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines.append(f"medians of {runs} run(s) per row; CPU = user + sys of the whole process")
    return "\n".join(lines)


def machine_lines(data: Path) -> list[str]:
    """What the figures were measured on."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    ram = next(
        (
            int(line.split()[1]) * 1024
            for line in Path("/proc/meminfo").read_text().splitlines()
            if line.startswith("MemTotal:")
        ),
        0,
    )
    fs = subprocess.run(
        ["findmnt", "-n", "-o", "FSTYPE,SOURCE", "-T", str(data)],
        capture_output=True, text=True, check=False,
    ).stdout.strip() or subprocess.run(
        ["stat", "-f", "-c", "%T", str(data)], capture_output=True, text=True, check=False
    ).stdout.strip()  # fmt: skip
    fs = " ".join(fs.split())
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"machine: {model}; {os.cpu_count()} cores (usable {len(os.sched_getaffinity(0))}); "
        f"RAM {ram / 2**30:.1f} GiB; kernel {platform.release()}; python "
        f"{platform.python_version()}",
        f"data folder {data}: {fs or '?'}, reflinks "
        f"{'available' if reflinks(data) else 'NOT available'} (cp --reflink=always); "
        f"load average {load}",
    ]


def reflinks(folder: Path) -> bool:
    """Does ``cp --reflink=always`` work between two files of ``folder``?"""
    a, b = folder / ".reflink-probe-a", folder / ".reflink-probe-b"
    try:
        a.write_bytes(b"x" * 65536)
        done = subprocess.run(
            ["cp", "--reflink=always", str(a), str(b)], capture_output=True, check=False
        )
        return done.returncode == 0
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
