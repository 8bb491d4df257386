"""What live progress and idempotency cost, against a real ``graft serve``, each with a
baseline from the same run.

1. Threads: the API process's thread count with 50 open ``/events`` streams, against the
   same server with none (the streams are async generators: no thread per client).
2. ``POST /v1/jobs`` latency with an ``Idempotency-Key`` (first requests, then replays),
   against the same request without one.

    .venv/bin/python bench/hooks_overhead.py
"""

from __future__ import annotations

import io
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Server  # noqa: E402  (reuses the e2e server harness)

STREAMS = 50
REQUESTS = 100


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def _ms(samples: list[float]) -> str:
    q = statistics.quantiles(samples, n=100)
    return f"p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        srv = Server(Path(tmp), GRAFT_WORKERS="0")  # jobs stay queued: their streams stay open
        srv.start()
        try:
            assert srv.process is not None
            client = srv.client()
            buf = io.BytesIO()
            torch.save({"w": torch.zeros(4)}, buf)
            ckpt = client.post("/v1/checkpoints?filename=w.pt", content=buf.getvalue()).json()
            body = {"source": ckpt["id"], "target": {"checkpoint": ckpt["id"]}}
            job = client.post("/v1/jobs", json=body).json()["id"]
            time.sleep(1.0)
            idle = _threads(srv.process.pid)
            stop = threading.Event()

            def hold() -> None:
                with (
                    httpx.Client(base_url=srv.url, timeout=None) as c,
                    c.stream("GET", f"/v1/jobs/{job}/events") as r,
                ):
                    for _ in r.iter_lines():
                        if stop.is_set():
                            return

            holders = [threading.Thread(target=hold, daemon=True) for _ in range(STREAMS)]
            for t in holders:
                t.start()
            time.sleep(3.0)
            opening = _threads(srv.process.pid)
            # Threads that served the 50 connections' set-up (auth, the job check) retire
            # after anyio's 10 s idle time; what stays is what the open streams hold.
            time.sleep(15.0)
            busy = _threads(srv.process.pid)
            print(
                f"API threads: {idle} idle; with {STREAMS} open event streams: {opening} "
                f"right after they opened, {busy} 15 s later"
            )
            stop.set()

            plain, first, replay = [], [], []
            for i in range(REQUESTS):
                t0 = time.perf_counter()
                assert client.post("/v1/jobs", json=body).status_code == 202
                plain.append(time.perf_counter() - t0)
                key = {"Idempotency-Key": f"bench-{i}"}
                t0 = time.perf_counter()
                assert client.post("/v1/jobs", json=body, headers=key).status_code == 202
                first.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                assert client.post("/v1/jobs", json=body, headers=key).status_code == 202
                replay.append(time.perf_counter() - t0)
            print(f"POST /v1/jobs without a key (baseline): {_ms(plain)}")
            print(f"POST /v1/jobs with a new Idempotency-Key: {_ms(first)}")
            print(f"POST /v1/jobs replayed from its key: {_ms(replay)}")
        finally:
            srv.stop()


if __name__ == "__main__":
    main()
