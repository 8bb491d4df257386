"""Load: N concurrent clients mixing uploads, job creation, polling and downloads against one
``graft serve`` for a bounded time. Reports requests served, p50/p99 latency per kind and
errors, then waits for every job to end and verifies each succeeded job's weights tensor by
tensor against the model it came from, and audits storage against the database.

Then the hostile phases (issue 12), each against the same server unless said otherwise:
``--stalled N`` uploads that send their headers and 4 bytes, then nothing (what they cost
the API: memory, descriptors, temp folders; how many were refused at once, and how long
until every one was answered); ``--deletes N`` checkpoints of 8 MiB uploaded then deleted
(disk freed, and how fast); and a server with no workers where ``--leases N`` running jobs
lose their worker (how fast the API's timer settles them). Memory (API and inspectors,
current and peak) is read from /proc before and after each phase.

    .venv/bin/python bench/load.py --clients 50 --seconds 30 --stalled 200

Baseline in the same run: the p50/p99 of ``GET /healthz`` on the idle server, and the
footprint of the idle server.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.hostile import deletes_phase, leases_phase, stalled_phase  # noqa: E402
from bench.probes import footprint  # noqa: E402
from tests.e2e.conftest import TERMINAL, Server  # noqa: E402
from tests.e2e.helpers import assert_consistent  # noqa: E402

MODELS = 8


def _model(seed: int):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.Flatten(), nn.Linear(16, 10))


def _payload(seed: int) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(_model(seed).state_dict(), buf)
    return buf.getvalue()


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _client(
    http: httpx.AsyncClient,
    deadline: float,
    payloads: list[bytes],
    latencies: dict[str, list[float]],
    errors: dict[str, int],
    jobs: dict[str, int],
    rng: random.Random,
) -> None:
    mine: list[str] = []
    checkpoints: dict[int, str] = {}
    while time.monotonic() < deadline:
        action = rng.choice(["upload", "job", "poll", "poll", "download"])
        seed = rng.randrange(MODELS)
        try:
            start = time.perf_counter()
            if action == "upload" or (action == "job" and seed not in checkpoints):
                action = "upload"
                r = await http.post(f"/v1/checkpoints?filename=m{seed}.pth", content=payloads[seed])
                ok = r.status_code in (200, 201)
                if ok:
                    checkpoints[seed] = r.json()["id"]
            elif action == "job":
                target = checkpoints[seed]
                r = await http.post(
                    "/v1/jobs", json={"source": target, "target": {"checkpoint": target}}
                )
                ok = r.status_code == 202
                if ok:
                    mine.append(r.json()["id"])
                    jobs[r.json()["id"]] = seed
            elif action == "poll" and mine:
                r = await http.get(f"/v1/jobs/{rng.choice(mine)}")
                ok = r.status_code == 200
            elif action == "download" and mine:
                r = await http.get(f"/v1/jobs/{rng.choice(mine)}/weights")
                ok = r.status_code in (200, 404)  # 404: not finished yet
            else:
                r = await http.get("/v1/jobs?limit=5")
                action, ok = "list", r.status_code == 200
            latencies[action].append(time.perf_counter() - start)
            if not ok:
                errors[f"{action} {r.status_code}"] += 1
        except httpx.HTTPError as exc:
            errors[f"{action} {type(exc).__name__}"] += 1


def _footprint(server: Server, label: str) -> None:
    assert server.process is not None
    print(f"[{label}] {footprint(server.process.pid, server.root / 'blobs' / 'tmp').line()}")


async def _run(server: Server, clients: int, seconds: float) -> None:
    import torch
    from safetensors.torch import load

    payloads = [_payload(s) for s in range(MODELS)]
    latencies: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    jobs: dict[str, int] = {}
    limits = httpx.Limits(max_connections=clients + 10)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as http:
        idle = []
        for _ in range(200):
            start = time.perf_counter()
            await http.get("/healthz")
            idle.append(time.perf_counter() - start)
        _footprint(server, "idle")
        deadline = time.monotonic() + seconds
        rngs = [random.Random(i) for i in range(clients)]
        started = time.perf_counter()
        await asyncio.gather(
            *(_client(http, deadline, payloads, latencies, errors, jobs, r) for r in rngs)
        )
        elapsed = time.perf_counter() - started
        served = sum(len(v) for v in latencies.values())
        print(f"{clients} clients, {elapsed:.1f} s: {served} requests ({served / elapsed:.0f}/s)")
        print(f"idle GET /healthz: p50 {_pct(idle, 0.5):.1f} ms, p99 {_pct(idle, 0.99):.1f} ms")
        every = [x for v in latencies.values() for x in v]
        print(f"under load, all: p50 {_pct(every, 0.5):.1f} ms, p99 {_pct(every, 0.99):.1f} ms")
        for kind, values in sorted(latencies.items()):
            print(
                f"  {kind:<9} n={len(values):<6} p50 {_pct(values, 0.5):7.1f} ms"
                f"  p99 {_pct(values, 0.99):7.1f} ms  mean {statistics.fmean(values) * 1000:.1f} ms"
            )
        print(f"errors: {dict(errors) or 'none'}")
        _footprint(server, f"after {clients} clients")
        log = server.log.read_text(errors="replace")
        causes = {m: log.count(m) for m in ("database is locked", "Traceback")}
        print(f"server log: {causes}")
        if causes["Traceback"] and "--show-log" in sys.argv:
            print(log[log.index("Traceback") :][:6000])
        if "--show-log" in sys.argv and "HELD" in log:
            print(log[log.index("HELD") :][:8000])
        # Every job must end, and every success must carry exactly the source's tensors.
        wait_start = time.monotonic()
        statuses: dict[str, int] = defaultdict(int)
        verified = 0
        for job_id, seed in jobs.items():
            while True:
                job = (await http.get(f"/v1/jobs/{job_id}")).json()
                if job["status"] in TERMINAL:
                    break
                await asyncio.sleep(0.2)
            statuses[job["status"]] += 1
            if job["status"] == "succeeded":
                weights = load((await http.get(f"/v1/jobs/{job_id}/weights")).content)
                expected = _model(seed).state_dict()
                assert set(weights) == set(expected), job_id
                assert all(torch.equal(weights[k], v) for k, v in expected.items()), job_id
                verified += 1
        print(
            f"jobs: {len(jobs)} created, {dict(statuses)}; {verified} outputs verified "
            f"tensor by tensor; drained in {time.monotonic() - wait_start:.1f} s after load"
        )
        assert statuses.get("succeeded", 0) == len(jobs), "a job did not succeed"
    # Blobs of requests that failed after publishing are collected at the next start.
    server.stop()
    server.start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--show-log", action="store_true", help="print the first traceback")
    parser.add_argument("--stalled", type=int, default=200, help="stalled uploads (0: skip)")
    parser.add_argument("--deletes", type=int, default=20, help="8 MiB uploads deleted")
    parser.add_argument("--leases", type=int, default=20, help="jobs whose worker dies")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = Server(
            Path(tmp),
            GRAFT_WORKERS=str(args.workers),
            GRAFT_LEASE_SECONDS="30",
            GRAFT_HEARTBEAT_SECONDS="2",
            GRAFT_ORPHAN_GRACE_SECONDS="0",
            GRAFT_BLOB_CLAIM_SECONDS="2",
            GRAFT_MAX_UPLOAD_BYTES=str(64 * 1024**2),
        )
        server.start()
        try:
            asyncio.run(_run(server, args.clients, args.seconds))
            if args.stalled:
                asyncio.run(stalled_phase(server, args.stalled))
                _footprint(server, "after the stalled uploads were answered")
            if args.deletes:
                asyncio.run(deletes_phase(server, args.deletes))
        finally:
            server.stop()
        assert_consistent(Path(tmp))
        print("storage audit: every record has its blob, every blob its record, tmp/ empty")
    if args.leases:
        with tempfile.TemporaryDirectory() as tmp:
            asyncio.run(leases_phase(Path(tmp), args.leases))


if __name__ == "__main__":
    main()
