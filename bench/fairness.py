"""Fair sharing under load (issue 23, SPEC §5.3): one owner's burst against another's one job.

Against one ``graft serve`` in keys mode with ``--workers`` local workers (default 1) and the
per-owner cap raised for the bench: owner ``heavy`` submits ``--jobs`` jobs (default 200)
and then uploads a safetensors file of ``--tensors`` one-byte tensors (default 200,000),
while owner ``light`` submits one small job and keeps calling the API (its job's status, its
job list, and a write: rotating its webhook secret). Prints:

- when ``light``'s job went queued -> running, measured from the moment a worker freed up
  (the last ``heavy`` job to finish before it started), and from its submission;
- ``light``'s API latencies (p50, p99, max) during the run, writes and reads apart;
- ``heavy``'s upload: status and duration.

    .venv/bin/python bench/fairness.py                     # the issue's scale
    .venv/bin/python bench/fairness.py --jobs 30 --tensors 40000   # a small run
    .venv/bin/python bench/fairness.py --against 0b90067 --rounds 2  # baseline, same session
    .venv/bin/python bench/fairness.py --against 0b90067 --rev HEAD   # both committed

With ``--against REV`` the same bench (this file) runs first against the code of git revision
``REV`` (exported to a temporary folder), then against this tree, ``--rounds`` times in
turn; each run prints the load average it started under (the host is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.trees import export_tree  # noqa: E402
from bench.trees import load_average as _load  # noqa: E402
from tests.e2e.conftest import TERMINAL, Server  # noqa: E402
from tests.e2e.helpers import net, saved  # noqa: E402


def tiny_tensors(n: int) -> bytes:
    """A safetensors file of ``n`` one-byte tensors."""
    header = {f"t.{i}": {"dtype": "U8", "shape": [1], "data_offsets": [i, i + 1]} for i in range(n)}
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + bytes(n)


def _keys(server: Server) -> dict[str, str]:
    from app.db.session import Database
    from app.services.auth import create_key

    database = Database(server.env["GRAFT_DATABASE_URL"])
    tokens = {}
    with database.transaction() as session:
        for owner in ("heavy", "light"):
            tokens[owner] = create_key(session, owner=owner, scopes=["write"])[1]
    database.dispose()
    return tokens


def _client(server: Server, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, timeout=300, headers={"Authorization": f"Bearer {token}"}
    )


def _upload(client: httpx.Client, seed: int) -> str:
    r = client.post("/v1/checkpoints?filename=m.pt", content=saved(net(seed)))
    r.raise_for_status()
    return str(r.json()["id"])


def _submit(client: httpx.Client, source: str) -> str:
    r = client.post("/v1/jobs", json={"source": source, "target": {"checkpoint": source}})
    r.raise_for_status()
    return str(r.json()["id"])


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _percentiles(samples: list[float]) -> str:
    if not samples:
        return "none"
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"n={len(ordered)} p50={statistics.median(ordered) * 1000:.0f} ms "
        f"p99={p99 * 1000:.0f} ms max={ordered[-1] * 1000:.0f} ms"
    )


def run(jobs: int, tensors: int, workers: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="graft-fairness-"))
    server = Server(
        root,
        GRAFT_AUTH="keys",
        GRAFT_WORKERS=str(workers),
        GRAFT_MAX_ACTIVE_JOBS_PER_OWNER=str(jobs + 10),
        GRAFT_MAX_TENSORS=str(max(tensors, 200_000)),
        GRAFT_LEASE_SECONDS="30",
        GRAFT_HEARTBEAT_SECONDS="5",
    )
    server.start()
    try:
        tokens = _keys(server)
        with _client(server, tokens["heavy"]) as heavy, _client(server, tokens["light"]) as light:
            heavy_source, light_source = _upload(heavy, 1), _upload(light, 2)
            # Built before anything is timed: encoding a 200,000-entry header holds this
            # process's GIL for seconds, which would count against light's calls.
            data = tiny_tensors(tensors)
            started = time.monotonic()
            burst = [_submit(heavy, heavy_source) for _ in range(jobs)]
            print(f"heavy: {jobs} jobs submitted in {time.monotonic() - started:.1f} s")
            # The first read of a job pays one-time imports (~1 s here): not what is measured.
            heavy.get(f"/v1/jobs/{burst[0]}").raise_for_status()
            upload: dict[str, object] = {}

            def big_upload() -> None:
                begun = time.monotonic()
                r = heavy.post("/v1/checkpoints?filename=tiny.safetensors", content=data)
                upload.update(
                    status=r.status_code,
                    seconds=round(time.monotonic() - begun, 2),
                    at=round(begun - started, 1),
                )

            thread = threading.Thread(target=big_upload)
            thread.start()
            light_job = _submit(light, light_source)
            reads, writes = [], []
            slowest: list[tuple[float, str, float]] = []  # (seconds, call, at)
            deadline = time.monotonic() + 600
            doc: dict[str, object] = {}
            while time.monotonic() < deadline:
                t = time.monotonic()
                doc = light.get(f"/v1/jobs/{light_job}").json()
                reads.append(time.monotonic() - t)
                slowest.append((reads[-1], "GET job", t - started))
                t = time.monotonic()
                light.get("/v1/jobs?limit=5").raise_for_status()
                reads.append(time.monotonic() - t)
                slowest.append((reads[-1], "GET jobs", t - started))
                t = time.monotonic()
                light.post("/v1/webhooks/secret").raise_for_status()
                writes.append(time.monotonic() - t)
                slowest.append((writes[-1], "POST secret", t - started))
                if doc["status"] in TERMINAL and not thread.is_alive():
                    break
                time.sleep(0.05)
            thread.join()
            _report(heavy, burst, doc, upload, reads, writes)
            for seconds, call, at in sorted(slowest, reverse=True)[:3]:
                print(f"  slow: {call} {seconds * 1000:.0f} ms at +{at:.1f} s")
            for job_id in burst:  # don't wait for the rest of the burst
                heavy.post(f"/v1/jobs/{job_id}/cancel")
    finally:
        server.stop()
        print(f"(server log: {server.log})")


def _report(  # type: ignore[no-untyped-def]
    heavy: httpx.Client, burst: list[str], doc, upload, reads, writes
) -> None:
    light_started = _when(doc.get("started_at"))
    created = _when(doc.get("created_at"))
    finished = []
    for job_id in burst:
        other = heavy.get(f"/v1/jobs/{job_id}").json()
        end = _when(other.get("finished_at"))
        if end is not None and light_started is not None and end <= light_started:
            finished.append(end)
    print(f"light's job: {doc.get('status')}")
    if light_started is not None and created is not None:
        print(f"  queued -> running: {(light_started - created).total_seconds():.2f} s")
        if finished:
            freed = max(finished)
            gap = (light_started - max(freed, created)).total_seconds()
            print(
                f"  after a worker freed up: {gap:.2f} s ({len(finished)} heavy jobs ended first)"
            )
        else:
            print("  it started before any heavy job ended (a worker was free)")
    print(f"light's reads:  {_percentiles(reads)}")
    print(f"light's writes: {_percentiles(writes)}")
    print(f"light's all:    {_percentiles(reads + writes)}")
    print(f"heavy's upload: {upload}")


def _export(rev: str) -> Path:
    """Revision ``rev``'s code, with this bench (the same bench for every tree)."""
    folder = export_tree(rev, "graft-fairness-tree-")
    shutil.copy(__file__, folder / "bench" / "fairness.py")
    shutil.copy(REPO / "bench" / "trees.py", folder / "bench" / "trees.py")  # it imports it
    return folder


def compare(against: str, rounds: int, argv: list[str], rev: str | None = None) -> None:
    """Run this bench against revision ``against``, then against this tree (or revision
    ``rev``), in turn."""
    base = _export(against)
    this = _export(rev) if rev else REPO
    trees = {f"baseline {against}": base, f"this tree{f' at {rev}' if rev else ''}": this}
    for n in range(rounds):
        for label, tree in trees.items():
            print(f"\n=== round {n + 1}: {label} ({_load()})", flush=True)
            subprocess.run(
                [sys.executable, str(tree / "bench" / "fairness.py"), *argv],
                cwd=tree,
                env={**os.environ, "PYTHONPATH": str(tree)},
                check=False,
            )
    shutil.rmtree(base, ignore_errors=True)
    if this != REPO:
        shutil.rmtree(this, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--tensors", type=int, default=200_000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--against", help="a git revision to measure first, as a baseline")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--rev", help="with --against: measure this revision, not the tree")
    args = parser.parse_args()
    if args.against:
        argv = ["--jobs", str(args.jobs), "--tensors", str(args.tensors)]
        compare(args.against, args.rounds, [*argv, "--workers", str(args.workers)], args.rev)
        return
    print(_load())
    run(args.jobs, args.tensors, args.workers)


if __name__ == "__main__":
    main()
