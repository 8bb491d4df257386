"""Whole-process conversion benchmark: ``graft convert`` against ``cp`` and the naive recipe.

Generates synthetic checkpoints of realistic shape once (cached under ``--dir``):

- ``resnet50``: a ResNet-50-like torch zip of ~100 MB with BatchNorm buffers;
- ``transformer``: a ~2 GB fp32 transformer, as a torch zip and as safetensors;
- ``big``: a ~6 GB fp16 transformer (only with ``--big``).

Then runs every command as a whole process, interleaved (A B C … A B C …) so drift hits all
alike, and prints one table: per row the median wall time and CPU time (user + sys), their
ratios to a durable copy (``cp`` then ``sync FILE``: Graft fsyncs its output too), to plain
``cp`` and to the naive approach (``torch.load`` + rename + ``save_file``), all measured in
the same run, peak RSS and peak anonymous RSS (RSS alone misleads on mmap paths: mapped file
pages count in it). The page cache is warm: every file is read once before timing.

CPU is counted one way for every row: ``ru_utime + ru_stime`` of ``wait4`` on the whole
process (every thread of it, BLAKE3's and the verifier's included, and every child it waited
for), the same for ``cp``; a ``getrusage(RUSAGE_CHILDREN)`` delta over all runs cross-checks
it. Upload rows count the server's CPU (its process tree, from ``/proc``), not curl's.
The machine line says the cores, the CPU model, the load average before and after, and
whether the output folder's filesystem takes reflinks (``cp`` then clones: near zero cost).

    .venv/bin/python bench/convert.py [--runs 3] [--big] [--dir data/bench]
        [--rows verified,no-verify,upload] [--base DIR]

``--base DIR`` runs every Graft row a second time with the code under DIR (e.g. a
``git archive`` of main), interleaved with this tree's, so before and after share one run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.rows import DURABLE as DURABLE_COPY  # noqa: E402
from bench.rows import BenchRow, write_rows  # noqa: E402

GRAFT = [sys.executable, "-c", "from app.cli import main; main()"]
NAIVE_SCRIPT = """
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
    cpu: float  # user + sys of the process and its children, seconds
    rss: int  # peak RSS (VmHWM), bytes
    anon: int  # peak anonymous RSS (RssAnon), bytes
    # CPU seconds of its busiest thread (``run_once(threads=True)``): the wall time cannot
    # fall below it however many cores are free, nor below CPU / cores.
    longest_thread: float = 0.0


_FIELDS = {"VmHWM:": "rss", "RssAnon:": "anon"}


def median_of(samples: dict[str, list[Sample]], label: str, field: str) -> float:
    """The median of one ``Sample`` field over the runs of the command ``label``."""
    return statistics.median(getattr(s, field) for s in samples[label])


def run_once(
    cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, *, threads: bool = False
) -> Sample:
    """Run ``cmd`` as a whole process; peaks are sampled from /proc every 2 ms, CPU time
    (user + sys) comes from ``wait4``'s rusage of that process alone. With ``threads``, each
    thread's CPU is also sampled (every ~50 ms, ``/proc/PID/task``) for ``longest_thread``.

    ``ru_maxrss`` is not used: it keeps the forking parent's high-water mark across exec.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        peak = {"rss": 0, "anon": 0}
        per_thread: dict[str, float] = {}
        done = threading.Event()

        def sample() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            tick = 0
            while not done.is_set():
                try:
                    text = status.read_text()
                except (FileNotFoundError, ProcessLookupError):
                    return
                for line in text.splitlines():
                    name = _FIELDS.get(line.split(":", 1)[0] + ":")
                    if name:
                        peak[name] = max(peak[name], int(line.split()[1]) * 1024)
                tick += 1
                if threads and tick % 25 == 0:
                    _thread_cpu(proc.pid, per_thread)
                done.wait(0.002)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        if proc.returncode != 0:
            err.seek(0)
            raise SystemExit(
                f"command failed ({proc.returncode}): {' '.join(cmd)}\n{err.read().decode()}"
            )
    COUNTED[0] += usage.ru_utime + usage.ru_stime
    longest = max(per_thread.values(), default=0.0)
    return Sample(wall, usage.ru_utime + usage.ru_stime, peak["rss"], peak["anon"], longest)


_TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int, seen: dict[str, float]) -> None:
    """Update ``seen`` (thread id -> CPU seconds, user + sys) from ``/proc/PID/task``."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return
    for task in tasks:
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        seen[task.name] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--big", action="store_true", help="also a ~6 GB fp16 checkpoint")
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--only", default=None, help="run only this checkpoint set (or `service`)")
    parser.add_argument("--no-service", action="store_true", help="skip the upload/API rows")
    parser.add_argument("--rows", default=None, help="only rows whose label holds one of these")
    parser.add_argument("--base", type=Path, default=None, help="baseline code to compare")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    sets = prepare(args.dir, args.big)
    out_dir = args.dir / "out"
    out_dir.mkdir(exist_ok=True)
    print(machine_line(out_dir, args.runs))
    rows = RowFilter(args.rows.split(",") if args.rows else None, args.base)
    header = ("set", "command", "wall s", "CPU s", "x durable", "x cp", "x cp CPU", "x naive",
              "peak RSS MB", "anon MB")  # fmt: skip
    table: list[tuple[str, ...]] = [header]
    bench_rows: list[BenchRow] = []
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    for name, f in sets.items():
        if args.only and name != args.only:
            continue
        samples = _measure(f, out_dir, args.runs, rows, full=not name.startswith("big"))
        size = f["zip"].stat().st_size
        table += _rows(f"{name} ({size / 1e9:.2f} GB)", samples)
        bench_rows += _bench_rows(f"{name} ({size / 1e9:.2f} GB)", samples, args.runs)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # before any server is reaped
    check = (
        f"cross-check (conversion rows): RUSAGE_CHILDREN grew {_cpu(after) - _cpu(children):.2f}"
        f" CPU-s, wait4 counted {COUNTED[0]:.2f} CPU-s"
    )
    if not args.no_service and args.only in (None, "service"):
        table += _service_rows(args.dir, out_dir, args.runs, rows)
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    for i, row in enumerate(table):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print(f"{check}; load average after: {_load()}")
    shutil.rmtree(out_dir, ignore_errors=True)
    write_rows(args.json, bench_rows)


COUNTED = [0.0]  # wait4 CPU summed over every run, for the cross-check


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine_line(folder: Path, runs: int) -> str:
    """Cores, CPU model, load, filesystem and whether it takes reflinks."""
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "?",
    )
    fs = subprocess.run(
        ["stat", "-f", "-c", "%T", str(folder)], capture_output=True, text=True, check=False
    ).stdout.strip()
    return (
        f"machine: {os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {model}, "
        f"{platform.machine()}, {platform.platform()}; python {platform.python_version()}; "
        f"output on {fs or '?'}, reflinks {'available' if _reflinks(folder) else 'NOT available'}; "
        f"load average {_load()}; warm page cache; {runs} runs, median; CPU = wait4 "
        "ru_utime+ru_stime of the whole process (all threads, waited children)"
    )


def _reflinks(folder: Path) -> bool:
    """Does ``FICLONE`` work between two files of ``folder``?"""
    import fcntl

    a, b = folder / ".reflink-probe-a", folder / ".reflink-probe-b"
    try:
        a.write_bytes(b"x" * 65536)
        with a.open("rb") as src, b.open("wb") as dst:
            fcntl.ioctl(dst.fileno(), 0x40049409, src.fileno())  # FICLONE
        return True
    except OSError:
        return False
    finally:
        a.unlink(missing_ok=True)
        b.unlink(missing_ok=True)


@dataclass
class RowFilter:
    """Which rows run (label substrings; baselines always), and the baseline code's folder."""

    only: list[str] | None
    base: Path | None

    def keep(self, label: str) -> bool:
        return label in (CP, DURABLE) or self.only is None or any(k in label for k in self.only)

    def expand(self, rows: dict[str, list[str]]) -> dict[str, Row]:
        """The kept rows; each Graft row twice with ``--base`` (``[base]``, then this tree)."""
        out: dict[str, Row] = {}
        for label, cmd in rows.items():
            if not self.keep(label):
                continue
            if self.base is not None and cmd[: len(GRAFT)] == GRAFT:
                env = {**os.environ, "PYTHONPATH": str(self.base)}
                out[f"{label} [base]"] = Row(cmd, self.base, env)
            out[label] = Row(cmd, ROOT, {**os.environ, "PYTHONPATH": str(ROOT)})
        return out


@dataclass
class Row:
    cmd: list[str]
    cwd: Path = ROOT
    env: dict[str, str] | None = None


def _measure(
    f: dict[str, Path], out_dir: Path, runs: int, rows_filter: RowFilter, *, full: bool = True
) -> dict[str, list[Sample]]:
    """Every command of one checkpoint set, interleaved ``runs`` times (``full=False``: the
    baselines and the rename-only conversions only, for the 6 GB set)."""
    out = out_dir / "out.safetensors"
    out_pt = out_dir / "out.pt"
    out_dcp = out_dir / "out.dcp"
    copy = out_dir / "copy"

    def graft(source: Path, *extra: str) -> list[str]:
        return [*GRAFT, "convert", str(source), str(f["target"]), "-r", str(f["recipe"]), *extra]

    rows: dict[str, list[str]] = {
        CP: ["cp", str(f["zip"]), str(copy)],
        DURABLE: ["sh", "-c", f'cp "{f["zip"]}" "{copy}" && sync "{copy}"'],
        NAIVE: [sys.executable, "-c", NAIVE_SCRIPT, str(f["zip"]), str(out)],
        "convert rename-only zip->st (verified)": graft(f["zip"], "-o", str(out)),
        "  same, --no-verify": graft(f["zip"], "-o", str(out), "--no-verify"),
        "  same, --sha256": graft(f["zip"], "-o", str(out), "--sha256"),
        "convert rename-only st->st (verified)": graft(f["safetensors"], "-o", str(out)),
        "  same, --no-verify ": graft(f["safetensors"], "-o", str(out), "--no-verify"),
        "convert rename-only zip->torch (verified)": graft(
            f["zip"], "-o", str(out_pt), "--format", "torch"
        ),
        "  same, --no-verify  ": graft(f["zip"], "-o", str(out_pt), "--format", "torch",
                                       "--no-verify"),
        "convert rename-only st->dcp (verified)": graft(
            f["safetensors"], "-o", str(out_dcp), "--format", "dcp"
        ),
        "  same, --no-verify   ": graft(f["safetensors"], "-o", str(out_dcp), "--format", "dcp",
                                        "--no-verify"),
        "convert, one adapted tensor (verified)": [
            *GRAFT, "convert", str(f["zip"]), str(f["adapt_target"]), "-r",
            str(f["adapt_recipe"]), "-o", str(out),
        ],
        "inspect": [*GRAFT, "inspect", str(f["zip"])],
        "plan": [*GRAFT, "plan", str(f["zip"]), str(f["target"]), "-r", str(f["recipe"])],
    }  # fmt: skip
    if not full:
        keep = (CP, DURABLE, "convert rename-only zip->st (verified)", "  same, --no-verify")
        rows = {k: v for k, v in rows.items() if k in keep}
    expanded = rows_filter.expand(rows)
    for path in (f["zip"], f["safetensors"]):  # warm the page cache
        with path.open("rb") as fh:
            while fh.read(1 << 24):
                pass
    samples: dict[str, list[Sample]] = {k: [] for k in expanded}
    for _ in range(runs):
        for label, row in expanded.items():
            samples[label].append(run_once(row.cmd, row.cwd, row.env))
            shutil.rmtree(out_dcp, ignore_errors=True)
            for leftover in (out, out_pt, out_dcp, copy):
                leftover.unlink(missing_ok=True)
                leftover.with_name(leftover.name + ".intoto.json").unlink(missing_ok=True)
    return samples


def _service_rows(
    folder: Path, out_dir: Path, runs: int, rows_filter: RowFilter
) -> list[tuple[str, ...]]:
    """Uploads of 1 GB (raw, multipart) against copies of the same file, and the API end to
    end for a 10 MB conversion, on one warm ``graft serve`` (and one of the ``--base`` code,
    its rows interleaved), plus resumable (tus) uploads. Upload rows count the server's CPU,
    not curl's."""
    from uploads import (
        api_roundtrips,
        make_checkpoint,
        server_cpu,
        start_server,
        tus_rows,
        upload_commands,
    )

    source = folder / "upload-1g.safetensors"
    make_checkpoint(source, 1024)
    small = folder / "e2e-10m.safetensors"
    skeleton = make_checkpoint(small, 10)
    copy = out_dir / "copy"
    servers = {"": start_server(out_dir / "srv", ROOT)}
    try:
        if rows_filter.base is not None:
            servers[" [base]"] = start_server(out_dir / "srv-base", rows_filter.base)
        rows: dict[str, tuple[list[str], Any]] = {
            CP: (["cp", str(source), str(copy)], None),
            DURABLE: (["sh", "-c", f'cp "{source}" "{copy}" && sync "{copy}"'], None),
        }
        for tag, server in servers.items():
            for label, cmd in upload_commands(server.url, source).items():
                if rows_filter.keep(label):
                    rows[label + tag] = (cmd, server)
        with source.open("rb") as fh:  # warm the page cache
            while fh.read(1 << 24):
                pass
        samples: dict[str, list[Sample]] = {k: [] for k in rows}
        for _ in range(runs):
            for label, (cmd, server) in rows.items():
                before = server_cpu(server) if server is not None else 0.0
                sample = run_once(cmd)
                if server is not None:  # the server's CPU for this upload, not curl's
                    sample.cpu = server_cpu(server) - before
                samples[label].append(sample)
                copy.unlink(missing_ok=True)
        tus: list[tuple[str, ...]] = []
        if rows_filter.keep("tus"):  # resumable uploads, against their own durable copy
            tus = tus_rows(servers[""].url, source, copy, runs)
        e2e: list[float] = []
        first = math.nan
        if rows_filter.keep("API e2e"):
            first = api_roundtrips(servers[""], small, skeleton, 1)[0]  # first job after /readyz
            e2e = api_roundtrips(servers[""], small, skeleton, 10 * runs)
    finally:
        for server in servers.values():
            server.stop()
    # Upload rows: the server's CPU against cp's; RSS is curl's, so it is not shown.
    table = [
        (*r[:8], "-", "-") if "upload" in r[1] else (*r[:7], "-", *r[8:])
        for r in _rows("upload (1.07 GB)", samples, naive=False)
    ]
    # (row, wall, x durable, x uncut tus): wall-clock ratios only
    table += [("upload (1.07 GB)", f"{r[0]} (x uncut {r[3]})", r[1], "-", r[2], "-", "-", "-",
               "-", "-") for r in tus]  # fmt: skip
    if e2e:
        p50, p90 = statistics.median(e2e), sorted(e2e)[int(0.9 * len(e2e))]
        table += [
            ("API e2e (10 MB)", f"upload+job+download, warm p50 (p90 {p90:.2f} s)", f"{p50:.2f}",
             "-", "-", "-", "-", "-", "-", "-"),
            ("API e2e (10 MB)", "the first job after /readyz", f"{first:.2f}",
             "-", "-", "-", "-", "-", "-", "-"),
        ]  # fmt: skip
    return table


def _bench_rows(name: str, samples: dict[str, list[Sample]], runs: int) -> list[BenchRow]:
    """The rename-only rows for bench/table.py, each against the durable copy of the same run,
    with the goals of issue 16: verified at most 1.5x (1.3x for the 6 GB set), ``--no-verify``
    at most 1.15x. A ``same, …`` row is named after the row above it."""
    durable = median_of(samples, DURABLE, "wall")
    rows, above = [], ""
    for label in samples:
        plain = label.removesuffix(" [base]").strip()
        if plain.startswith("convert"):
            above = plain.removesuffix(" (verified)")
        if "rename-only" not in above or not (plain.startswith(("convert", "same"))):
            continue
        full = plain if plain.startswith("convert") else f"{above}, {plain.removeprefix('same, ')}"
        goal = None
        if plain.endswith("(verified)"):
            goal = 1.3 if name.startswith("big") else 1.5
        elif plain.endswith("--no-verify"):
            goal = 1.15
        rows.append(
            BenchRow(
                group="convert", row=full + (" [base]" if label.endswith("[base]") else ""),
                wall=median_of(samples, label, "wall"), baseline=DURABLE_COPY,
                baseline_wall=durable, runs=runs, cpu=median_of(samples, label, "cpu"),
                rss=int(median_of(samples, label, "rss")), goal_ratio=goal, note=name,
            )
        )  # fmt: skip
    return rows


CP = "cp (baseline)"
DURABLE = "cp + sync FILE (durable baseline)"
NAIVE = "naive: torch.load + rename + save_file"


def _rows(
    name: str, samples: dict[str, list[Sample]], *, naive: bool = True
) -> list[tuple[str, ...]]:
    """Medians, and ratios of medians to the baselines measured in the same run."""

    def med(label: str, field: str) -> float:
        return statistics.median(getattr(s, field) for s in samples[label])

    cp, cp_cpu, durable = med(CP, "wall"), med(CP, "cpu"), med(DURABLE, "wall")
    naive_wall = med(NAIVE, "wall") if naive and NAIVE in samples else math.nan  # shown as -
    rows: list[tuple[str, ...]] = []
    for label in samples:
        wall, cpu = med(label, "wall"), med(label, "cpu")
        rows.append(
            (name, label.strip(), f"{wall:.2f}", f"{cpu:.2f}", f"{wall / durable:.2f}",
             f"{wall / cp:.2f}", f"{cpu / cp_cpu:.2f}",
             f"{wall / naive_wall:.2f}" if math.isfinite(naive_wall) else "-",
             f"{med(label, 'rss') / 1e6:.0f}", f"{med(label, 'anon') / 1e6:.0f}")
        )  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
