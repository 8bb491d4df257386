"""First job against tenth: does a fresh ``graft serve`` make its first conversion wait?

Starts ``graft serve`` (one embedded worker) from a source tree, waits for ``/readyz``, then
runs ten identical small conversions one after another and prints how long each took from
``POST /v1/jobs`` to a terminal status. Give it a second tree (e.g. a ``git worktree`` of an
older commit) to measure a baseline in the same run::

    .venv/bin/python bench/first_job.py . /tmp/graft-base
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.trees import free_port, saved_net


def measure(tree: Path, runs: int = 10) -> tuple[float, list[float]]:
    """Seconds from start to ready, and each job's seconds from submit to done."""
    root = Path(tempfile.mkdtemp(prefix="graft-first-job-"))
    port = free_port()
    env = {**os.environ, "GRAFT_DATABASE_URL": f"sqlite:///{root / 'graft.db'}",
           "GRAFT_STORAGE_DIR": str(root / "blobs"), "GRAFT_WORKERS": "1",
           "GRAFT_DEVICE": "cpu", "GRAFT_POLL_SECONDS": "0.05"}  # fmt: skip
    started = time.monotonic()
    with (root / "serve.log").open("wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve",
             "--port", str(port)],
            cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            if server.poll() is not None:
                raise SystemExit(f"graft serve exited with {server.returncode}; see {root}")
            if time.monotonic() - started > 300:
                raise SystemExit(f"graft serve was not ready within 300 s; see {root}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        ready = time.monotonic() - started
        with httpx.Client(base_url=url, timeout=120) as client:
            src = client.post("/v1/checkpoints?filename=a.pth", content=saved_net(10)).json()["id"]
            tgt = client.post("/v1/checkpoints?filename=b.pth", content=saved_net(5)).json()["id"]
            times = []
            for _ in range(runs):
                t0 = time.monotonic()
                body = {"source": src, "target": {"checkpoint": tgt}, "recipe": {"drop": ["3.*"]}}
                job = client.post("/v1/jobs", json=body).json()
                while job["status"] not in ("succeeded", "failed", "cancelled"):
                    time.sleep(0.02)
                    job = client.get(f"/v1/jobs/{job['id']}").json()
                assert job["status"] == "succeeded", job
                times.append(time.monotonic() - t0)
        return ready, times
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(30)


def main() -> None:
    for tree in sys.argv[1:] or ["."]:
        ready, times = measure(Path(tree).resolve())
        median = sorted(times[1:])[len(times[1:]) // 2]
        print(f"{tree}: ready after {ready:.1f} s; first job {times[0]:.2f} s, tenth "
              f"{times[-1]:.2f} s, median of 2-10 {median:.2f} s")  # fmt: skip


if __name__ == "__main__":
    main()
