"""The local executor against Celery (1 and 2 workers), on this machine's real services.

For each setup it runs a burst of ``--jobs`` conversions submitted at once (throughput, and
the queue-to-start latency each job saw in that burst), then ``--idle`` jobs one at a time
on the idle system (pickup latency and the overhead per job: submit-to-finished minus the
conversion run directly). The baseline, measured in the same run: the same conversion
through :func:`app.services.conversion.run_conversion` in a sandbox child, as a worker runs
it, with no queue, no database and no blob store.

Setups: ``local-1`` / ``local-2`` (``graft serve``: SQLite, file storage, 1 or 2 embedded
workers polling every 0.5 s) and ``celery-1`` / ``celery-2`` (API + 1 or 2
``graft worker --executor celery``: PostgreSQL, RabbitMQ, the same kind of file storage, so
that only the executor differs). Default lease and heartbeat settings throughout.

    .venv/bin/python bench/executors.py --jobs 40 --idle 8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Server  # noqa: E402
from tests.executors.celery_stack import celery_stack, unreachable_reason  # noqa: E402

DEFAULTS = {"GRAFT_LEASE_SECONDS": "30", "GRAFT_HEARTBEAT_SECONDS": "5",
            "GRAFT_POLL_SECONDS": "0.5", "GRAFT_WORKER_NICE": "0"}  # fmt: skip


def _model_bytes(seed: int) -> bytes:
    import io

    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(*[nn.Linear(256, 256) for _ in range(8)])  # ~2 MB, 16 tensors
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def direct_seconds(tmp: Path, runs: int) -> float:
    """Median seconds of one conversion run directly (sandboxed, as a worker runs it)."""
    import hashlib

    from app.engine.options import WriteOptions
    from app.engine.recipe import load_recipe
    from app.engine.target_spec import parse_target_spec
    from app.sandbox.runner import Limits
    from app.services.conversion import ConversionRequest, PathSink, run_conversion

    src, tgt = tmp / "s.pth", tmp / "t.pth"
    src.write_bytes(_model_bytes(1))
    tgt.write_bytes(_model_bytes(2))
    times = []
    for i in range(runs + 1):
        request = ConversionRequest(
            source=[src], target=parse_target_spec({"checkpoint": "t"}), target_files=[tgt],
            recipe=load_recipe(None), options=WriteOptions(device="cpu"),
            source_sha256=hashlib.sha256(src.read_bytes()).hexdigest(),  # as uploads give it
        )  # fmt: skip
        start = time.perf_counter()
        run_conversion(request, PathSink(tmp / f"out{i}.safetensors"), limits=Limits())
        if i:  # the first run starts the fork server
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _direct_in_child(tmp: Path, runs: int) -> float:
    """:func:`direct_seconds` in a fresh ``python -c`` (a worker's fork server does not
    re-import a ``__main__`` script in each child; this bench's would)."""
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); from pathlib import Path; "
            f"from bench.executors import direct_seconds; "
            f"print(direct_seconds(Path({str(tmp)!r}), {runs}))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _wait(client: httpx.Client, ids: list[str], timeout: float = 600) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    pending, done = set(ids), {}
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in ("succeeded", "failed", "cancelled"):
                assert job["status"] == "succeeded", job
                done[job_id] = job
                pending.discard(job_id)
        time.sleep(0.05)
    if pending:
        raise TimeoutError(f"{len(pending)} job(s) unfinished")
    return [done[i] for i in ids]


def measure(url: str, jobs: int, idle: int, direct: float) -> dict[str, float]:
    with httpx.Client(base_url=url, timeout=60) as client:

        def upload(seed: int) -> str:
            r = client.post(f"/v1/checkpoints?filename=m{seed}.pth", content=_model_bytes(seed))
            r.raise_for_status()
            return str(r.json()["id"])

        source, target = upload(1), upload(2)
        body = {"source": source, "target": {"checkpoint": target}, "device": "cpu"}

        def submit() -> str:
            r = client.post("/v1/jobs", json=body)
            r.raise_for_status()
            return str(r.json()["id"])

        _wait(client, [submit()])  # warm: fork servers started, connections open
        start = time.perf_counter()
        burst = _wait(client, [submit() for _ in range(jobs)])
        wall = time.perf_counter() - start
        queued = [j["timings"]["queued_s"] for j in burst]
        pickups, overheads = [], []
        for _ in range(idle):
            t0 = time.perf_counter()
            (job,) = _wait(client, [submit()])
            overheads.append(time.perf_counter() - t0 - direct)
            pickups.append(job["timings"]["queued_s"])
    return {
        "jobs_per_min": jobs / wall * 60,
        "burst_p50": _pct(queued, 0.5), "burst_p99": _pct(queued, 0.99),
        "idle_p50": _pct(pickups, 0.5), "idle_p99": _pct(pickups, 0.99),
        "overhead": statistics.median(overheads),
    }  # fmt: skip


@contextmanager
def local(tmp: Path, workers: int) -> Iterator[str]:
    server = Server(tmp, GRAFT_WORKERS=str(workers), **DEFAULTS)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@contextmanager
def celery(tmp: Path, workers: int) -> Iterator[str]:
    queues = ("cpu",) * workers
    with celery_stack(tmp, None, queues=queues, stage_delay="0", **DEFAULTS) as stack:
        yield stack.server.url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs in each burst")
    parser.add_argument("--idle", type=int, default=8, help="jobs run one at a time")
    parser.add_argument("--only", default="local-1,local-2,celery-1,celery-2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp_name:
        tmp = Path(tmp_name)
        direct = _direct_in_child(tmp, runs=max(5, args.idle))
        print(f"direct conversion (sandboxed, no queue): {direct * 1000:.0f} ms per job")
        print(
            "| setup | jobs/min | queue-to-start p50 / p99 (burst of "
            f"{args.jobs}) | pickup p50 / p99 (idle) | overhead per job vs direct |"
        )
        print("|---|---|---|---|---|")
        rows = [(name, local if name.startswith("local") else celery, int(name[-1]))
                for name in args.only.split(",")]  # fmt: skip
        for name, setup, workers in rows:
            if setup is celery and (reason := unreachable_reason()):
                print(f"| {name} | skipped: {reason} | | | |")
                continue
            folder = tmp / name
            folder.mkdir()
            with setup(folder, workers) as url:
                m = measure(url, args.jobs, args.idle, direct)
            print(
                f"| {name} | {m['jobs_per_min']:.0f} | {m['burst_p50']:.2f} s / "
                f"{m['burst_p99']:.2f} s | {m['idle_p50'] * 1000:.0f} ms / "
                f"{m['idle_p99'] * 1000:.0f} ms | {m['overhead'] * 1000:.0f} ms |",
                flush=True,
            )


if __name__ == "__main__":
    main()
