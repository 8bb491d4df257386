"""Object store to object store (issue #25): a conversion job on S3 storage against
``rclone copyto`` of the same object, on one ``rclone serve s3``, interleaved.

A 2 GB safetensors source (float32, 64 MiB tensors) is stored in the service's blob store on
``rclone serve s3``; each run converts it (a skeleton target, every tensor renamed: a byte
copy) into the same store with a job run by a worker process (``JobRunner.run_once``, the
fork server warmed first, as a running worker is), each followed by:

- ``rclone copyto`` of the same object to another key (rclone's default: a server-side
  ``CopyObject`` on one remote);
- ``rclone copyto --disable Copy``: the bytes through rclone (GET, multipart PUT), the
  baseline for "through the host";
- the same job with ``GRAFT_S3_STREAM=0``: the local path (download, convert to a file,
  upload), for what streaming replaces.

Per row: median wall (job rows: the job alone in the warm worker, and the whole process),
peak memory of the whole process tree sampled from /proc every 10 ms (the largest process's
RSS, the tree's summed RSS and PSS; torch is mapped in every conversion child), and the
largest file seen in the worker's scratch folder (sampled every 10 ms). ``wait4``'s
``ru_maxrss`` is not shown: it keeps the forking parent's high-water mark across exec (this
script's, which wrote the source), and the conversion child is reaped by the fork server,
not by the measured process, so it would not see it anyway.

Alone: ``.venv/bin/python bench/s3_stream.py [--size-mb 2048] [--runs 3] [--dir DIR]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.rows import BenchRow, write_rows  # noqa: E402
from tests.s3server import S3Server, rclone_binary, serve_s3  # noqa: E402

BUCKET = "graft"
PART = 16 << 20


@dataclass
class Sample:
    """One measured run of one row."""

    wall: float
    job: float | None  # the job alone, in the warm worker
    rss_max: int  # the largest process's RSS
    rss_sum: int  # the tree's RSS summed (shared pages counted in each)
    pss_sum: int  # the tree's PSS summed (shared pages split)
    maxrss: int  # wait4 ru_maxrss
    largest_file: int
    stages: dict[str, float] | None = None  # job rows: seconds from the job's start to each


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            text = Path(f"/proc/{pid}/task/{task}/children").read_text()
        except OSError:
            continue
        found += [int(c) for c in text.split()]
    return found


def _tree(pid: int) -> list[int]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def _memory(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) * 1024
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def _largest(folder: Path | None) -> int:
    if folder is None:
        return 0
    largest = 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            with contextlib.suppress(OSError):
                largest = max(largest, os.stat(os.path.join(dirpath, name)).st_size)
    return largest


def run_tree(cmd: list[str], env: dict[str, str], watch: Path | None) -> Sample:
    """Run ``cmd``; sample its process tree's memory and ``watch``'s largest file; ``wait4``
    gives ``ru_maxrss`` of the process (with its waited children: not the conversion
    child, which the fork server reaps, so the /proc samples are the tree's figure)."""
    start = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        peak = {"rss_max": 0, "rss_sum": 0, "pss_sum": 0, "file": 0}
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                mem = [_memory(p) for p in _tree(proc.pid)]
                peak["rss_max"] = max(peak["rss_max"], max((r for r, _ in mem), default=0))
                peak["rss_sum"] = max(peak["rss_sum"], sum(r for r, _ in mem))
                peak["pss_sum"] = max(peak["pss_sum"], sum(p for _, p in mem))
                peak["file"] = max(peak["file"], _largest(watch))
                done.wait(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)}\n{err.read().decode()[-3000:]}")
        lines = out.read().decode().strip().splitlines()
    answer = json.loads(lines[-1]) if watch is not None else {}
    return Sample(wall, answer.get("job"), peak["rss_max"], peak["rss_sum"], peak["pss_sum"],
                  usage.ru_maxrss * 1024, peak["file"], answer.get("stages"))  # fmt: skip


def run_job(job_id: str) -> None:
    """The worker side (``--job``): warm the fork server, then run the one queued job."""
    from app.config import Settings
    from app.executors.hooks import install_stage_hook
    from app.executors.local import JobRunner
    from app.executors.runtime import JobRuntime
    from app.services.conversion import warm_up

    stages: dict[str, float] = {}

    def mark(stage: str, _tick: Any) -> None:
        stages.setdefault(stage, time.perf_counter())

    install_stage_hook(mark)
    runtime = JobRuntime.from_settings(Settings())
    warm_up()
    started = time.perf_counter()
    assert JobRunner(runtime).run_once()
    took = time.perf_counter() - started
    at = {stage: round(t - started, 2) for stage, t in stages.items()}
    with runtime.database.transaction(write=False) as session:
        from app.db.repositories import JobRepository

        job = JobRepository(session).get(job_id)
        assert job is not None and job.status == "succeeded", job and job.error_message
    print(json.dumps({"job": took, "stages": at}))


def _checkpoint(path: Path, size_mb: int) -> dict[str, Any]:
    """A safetensors file of ``size_mb`` in 64 MiB float32 tensors, and its skeleton."""
    import torch
    from safetensors.torch import save_file

    count = max(1, size_mb // 64)
    shape = (16 * 1024, 1024)
    if not path.exists():
        gen = torch.Generator().manual_seed(0)
        save_file({f"blocks.{i}.weight": torch.randn(shape, generator=gen) for i in range(count)},
                  str(path))  # fmt: skip
    tensors = {f"layers.{i}.weight": {"shape": list(shape), "dtype": "float32",
                                       "kind": "parameter", "module": "Linear"}
               for i in range(count)}  # fmt: skip
    return {"schema": "graft.skeleton/v1", "tensors": tensors}


def _env(server: S3Server, folder: Path, stream: bool) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GRAFT_DATABASE_URL": f"sqlite:///{folder / 'graft.db'}",
        "GRAFT_STORAGE_URL": f"s3://{BUCKET}/blobs",
        "GRAFT_S3_ENDPOINT_URL": server.endpoint_url,
        "GRAFT_SCRATCH_DIR": str(folder / "scratch"),
        "GRAFT_S3_PART_SIZE": str(PART),
        "GRAFT_S3_STREAM": "1" if stream else "0",
        "GRAFT_DEVICE": "cpu",
        "AWS_ACCESS_KEY_ID": server.access_key,
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }


def _rclone_env(server: S3Server) -> dict[str, str]:
    return {
        **os.environ,
        "RCLONE_CONFIG_BENCH_TYPE": "s3",
        "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
        "RCLONE_CONFIG_BENCH_ENDPOINT": server.endpoint_url,
        "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": server.access_key,
        "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": server.secret_key,
        "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
    }


def _register(server: S3Server, folder: Path, source: Path) -> tuple[str, str]:
    """Store the source and record it (in this process: it is the bench's own file).
    Returns the checkpoint id and its object key."""
    from app.config import Settings
    from app.db.migrate import upgrade
    from app.db.session import Database
    from app.engine.readers import inspect_source
    from app.services.checkpoints import publish_checkpoint
    from app.storage import StagedFile, open_store

    os.environ.update(_env(server, folder, True))
    settings = Settings()
    database = Database(settings.database_url)
    upgrade(database)
    store = open_store(settings)
    store.ensure()
    with store.workdir() as work:
        staged = StagedFile(work / source.name)
        with source.open("rb") as f:
            while chunk := f.read(64 << 20):
                staged.write(chunk)
        staged.close()
        with database.transaction() as session:
            checkpoint, _ = publish_checkpoint(session, store, [staged], inspect_source(source))
            ids = checkpoint.id, store.key(checkpoint.sha256)  # type: ignore[attr-defined]
    database.dispose()
    return ids


def _queue(folder: Path, source_id: str, skeleton: dict[str, Any]) -> str:
    from app.db.models import Job
    from app.db.repositories import JobRepository
    from app.db.session import Database

    database = Database(f"sqlite:///{folder / 'graft.db'}")
    recipe = {"version": 1, "rename": [{"prefix": "blocks.", "to": "layers."}]}
    with database.transaction() as session:
        job = Job(source_id=source_id, target={"skeleton": skeleton}, recipe=recipe)
        job_id = JobRepository(session).add(job).id
    database.dispose()
    return job_id


def machine_line(runs: int) -> str:
    model = next((line.split(":", 1)[1].strip() for line in
                  Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), "?")  # fmt: skip
    version = subprocess.run([rclone_binary() or "rclone", "version"], capture_output=True,
                             text=True, check=False).stdout.splitlines()[:1]  # fmt: skip
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"machine: {os.cpu_count()} cores, {model}, {platform.platform()}; python "
            f"{platform.python_version()}; {' '.join(version)} serve s3 on loopback over a "
            f"local folder; load average {load}; {runs} runs interleaved, median; part "
            f"{PART >> 20} MiB")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=2048)
    parser.add_argument("--dir", type=Path, default=ROOT / "data" / "bench-s3")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--job", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        run_job(args.job)
        return
    folder = args.dir.resolve()
    shutil.rmtree(folder / "root", ignore_errors=True)
    shutil.rmtree(folder / "scratch", ignore_errors=True)
    (folder / "graft.db").unlink(missing_ok=True)
    (folder / "root" / BUCKET).mkdir(parents=True)
    print(machine_line(args.runs))
    source = folder / f"source-{args.size_mb}mb.safetensors"
    skeleton = _checkpoint(source, args.size_mb)
    samples: dict[str, list[Sample]] = {}
    with serve_s3(folder / "root") as server:
        source_id, key = _register(server, folder, source)
        rclone = [rclone_binary() or "rclone", "copyto", "--s3-no-check-bucket"]
        for run in range(args.runs):
            for label, stream in (("graft job, streamed", True), ("graft job, local path", False)):
                job_id = _queue(folder, source_id, skeleton)
                cmd = [sys.executable, __file__, "--job", job_id]
                samples.setdefault(label, []).append(
                    run_tree(cmd, _env(server, folder, stream), folder / "scratch")
                )
                copy = f"bench:{BUCKET}/copies/{run}"
                for name, extra in (("rclone copyto --disable Copy", ["--disable", "Copy"]),
                                    ("rclone copyto (server-side)", [])):  # fmt: skip
                    cmd = [*rclone, *extra, f"bench:{BUCKET}/{key}", copy]
                    samples.setdefault(name, []).append(run_tree(cmd, _rclone_env(server), None))
                    subprocess.run([*rclone[:1], "deletefile", copy], env=_rclone_env(server),
                                   check=True)  # fmt: skip
    _print(samples, source.stat().st_size)
    write_rows(args.json, _rows(samples, source.stat().st_size, args.runs))
    shutil.rmtree(folder / "root", ignore_errors=True)


def _rows(samples: dict[str, list[Sample]], size: int, runs: int) -> list[BenchRow]:
    """The graft rows for bench/table.py, against ``rclone copyto`` through this host (the
    job alone, in its warm worker); the streamed row carries the issue's goals: at most
    1.5x, peak RSS of the largest process at most 200 MB, no local file over one part."""
    through = "rclone copyto --disable Copy"
    base = statistics.median(s.wall for s in samples[through])
    rows = []
    for label in ("graft job, streamed", "graft job, local path"):
        runs_of = samples[label]
        largest = max(s.largest_file for s in runs_of)
        streamed = label.endswith("streamed")
        rows.append(BenchRow(
            group="s3", row=f"{label} ({size / 1e9:.2f} GB)", baseline=through,
            wall=statistics.median((s.job or s.wall) for s in runs_of), baseline_wall=base,
            runs=runs, rss=max(s.rss_max for s in runs_of),
            goal_ratio=1.5 if streamed else None, goal_rss=200_000_000 if streamed else None,
            note=f"largest local file {largest / (1 << 20):.1f} MB",
        ))  # fmt: skip
    return rows


def _print(samples: dict[str, list[Sample]], size: int) -> None:
    def med(label: str, field: str) -> float:
        return statistics.median(getattr(s, field) or 0 for s in samples[label])

    base = med("rclone copyto --disable Copy", "wall")
    server_side = med("rclone copyto (server-side)", "wall")
    mb = 1 << 20
    header = ("row", "wall s", "job s", "x rclone (through)", "x rclone (server-side)",
              "largest proc RSS MB", "tree RSS MB", "tree PSS MB",
              "largest local file MB")  # fmt: skip
    table = [header]
    for label in samples:
        wall, job = med(label, "wall"), med(label, "job")
        timed = job or wall
        table.append((label, f"{wall:.2f}", f"{job:.2f}" if job else "-",
                      f"{timed / base:.2f}", f"{timed / server_side:.2f}",
                      f"{max(s.rss_max for s in samples[label]) / mb:.0f}",
                      f"{max(s.rss_sum for s in samples[label]) / mb:.0f}",
                      f"{max(s.pss_sum for s in samples[label]) / mb:.0f}",
                      f"{max(s.largest_file for s in samples[label]) / mb:.1f}"))  # fmt: skip
    widths = [max(len(str(r[i])) for r in table) for i in range(len(header))]
    print(
        f"source: {size / 1e9:.2f} GB safetensors; ratios: job alone (graft rows) or whole "
        "process (rclone rows) over the rclone row's median"
    )
    for i, row in enumerate(table):
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for label, runs in samples.items():
        for s in runs:
            if s.stages:
                print(f"{label}: stages began at (s) {s.stages}, job {s.job:.2f}")
    # Each job is followed by its own rclone pair: job i's neighbour is rclone sample i.
    through = samples["rclone copyto --disable Copy"]
    for label, offset in (("graft job, streamed", 0), ("graft job, local path", 1)):
        ratios = [s.job / through[2 * i + offset].wall for i, s in enumerate(samples[label])
                  if s.job is not None]  # fmt: skip
        print(f"{label}: job / the rclone --disable Copy run right after it, per run: "
              + ", ".join(f"{r:.2f}" for r in ratios))  # fmt: skip


if __name__ == "__main__":
    main()
