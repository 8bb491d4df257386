"""Service benchmarks against a real ``graft serve``, each with a baseline from the same run.

1. Responsiveness: latency of ``GET /healthz`` and ``GET /v1/jobs/{id}`` while a conversion of
   a ``--size-mb`` checkpoint runs in a worker process (target p99: tens of milliseconds),
   against the same requests on the idle server.
2. Upload throughput: ``POST /v1/checkpoints`` (raw body, streamed) of the same file, against
   ``cp`` of it on the same file system.

    .venv/bin/python bench/api_service.py --size-mb 1024
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Server  # noqa: E402  (reuses the e2e server harness)


def _make_checkpoint(path: Path, size_mb: int) -> dict[str, object]:
    import torch
    from safetensors.torch import save_file

    chunk = 64 * 1024 * 1024 // 4  # 64 MiB float32 tensors
    count = max(1, size_mb // 64)
    tensors = {f"blocks.{i}.weight": torch.randn(chunk // 1024, 1024) for i in range(count)}
    save_file(tensors, path)
    return {
        "schema": "graft.skeleton/v1",
        "tensors": {
            k: {"shape": list(v.shape), "dtype": "float32", "kind": "parameter", "module": "Linear"}
            for k, v in tensors.items()
        },
    }


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000  # noqa: E731
    worst = ordered[-1] * 1000
    return f"n={len(ordered):5d} p50={p(0.5):6.1f} ms  p99={p(0.99):6.1f} ms  max={worst:6.1f} ms"


def _probe(client: httpx.Client, paths: list[str], stop: threading.Event) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {p: [] for p in paths}
    while not stop.is_set():
        for path in paths:
            start = time.perf_counter()
            client.get(path).raise_for_status()
            samples[path].append(time.perf_counter() - start)
        time.sleep(0.01)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=REPO / "bench") as tmp:
        root = Path(tmp)
        source = root / "big.safetensors"
        skeleton = _make_checkpoint(source, args.size_mb)
        size = source.stat().st_size
        print(f"checkpoint: {size / 2**20:.0f} MiB, {len(skeleton['tensors'])} tensors")  # type: ignore[arg-type]

        start = time.perf_counter()
        shutil.copyfile(source, root / "copy.safetensors")
        os.sync()
        cp_s = time.perf_counter() - start
        (root / "copy.safetensors").unlink()

        server = Server(root / "srv", GRAFT_WORKERS="1", GRAFT_MAX_UPLOAD_BYTES=str(size * 2))
        (root / "srv").mkdir()
        server.start()
        try:
            with server.client() as client, source.open("rb") as fh:
                start = time.perf_counter()
                r = client.post(
                    "/v1/checkpoints?filename=big.safetensors",
                    content=iter(lambda: fh.read(1 << 20), b""),
                )
                upload_s = time.perf_counter() - start
                r.raise_for_status()
                checkpoint = r.json()["id"]
                print(
                    f"upload: {size / upload_s / 2**20:7.0f} MiB/s ({upload_s:.2f} s)   "
                    f"cp: {size / cp_s / 2**20:7.0f} MiB/s ({cp_s:.2f} s)   "
                    f"upload/cp time ratio: {upload_s / cp_s:.2f}x"
                )

                idle_stop = threading.Event()
                timer = threading.Timer(3.0, idle_stop.set)
                timer.start()
                idle = _probe(client, ["/healthz"], idle_stop)
                job = client.post(
                    "/v1/jobs", json={"source": checkpoint, "target": {"skeleton": skeleton}}
                ).json()
                paths = ["/healthz", f"/v1/jobs/{job['id']}"]
                busy_stop = threading.Event()
                result: dict[str, list[float]] = {}
                prober = threading.Thread(
                    target=lambda: result.update(_probe(client, paths, busy_stop))
                )
                prober.start()
                done = server.wait(client, job["id"], timeout=3600)
                busy_stop.set()
                prober.join()
                run_s = done["timings"]["run_s"]
                rate = size / run_s / 2**20
                print(f"conversion: {done['status']} in {run_s:.1f} s ({rate:.0f} MiB/s)")
                print(f"idle  /healthz          {_percentiles(idle['/healthz'])}")
                print(f"busy  /healthz          {_percentiles(result['/healthz'])}")
                print(f"busy  /v1/jobs/{{id}}     {_percentiles(result[paths[1]])}")
                ratio = (
                    sorted(result["/healthz"])[int(0.99 * len(result["/healthz"]))]
                    / sorted(idle["/healthz"])[int(0.99 * len(idle["/healthz"]))]
                )
                print(f"p99 busy/idle ratio (/healthz): {ratio:.1f}x")
        finally:
            server.stop()
            subprocess.run(["sync"], check=False)


if __name__ == "__main__":
    main()
