"""Upload and end-to-end service rows for ``make bench``, against a real ``graft serve``.

- ``curl -T`` (raw body, streamed) and ``curl -F`` (multipart) of a 1 GB safetensors file to
  ``POST /v1/checkpoints``, timed to the response, alternated with a durable copy
  (``cp`` + ``sync FILE``) and a plain ``cp`` of the same file;
- the API end to end for a 10 MB conversion: upload, job, poll until succeeded, download,
  repeated on the warm server (p50 and p90);
- resumable (tus) uploads of the same file in 64 MiB parts by a lean client
  (:func:`tus_lean`: ``sendfile``, so the client costs nothing to measure; to the record),
  uncut and cut by a dropped connection at 50 % then resumed, alternated with the durable
  copy: ratios to it and cut / uncut (:func:`tus_rows`);
- ``compare --base DIR``: every upload row on this tree's server and on one running the
  code under DIR (e.g. a worktree of main), interleaved with the durable copy, with each
  server's CPU per upload (:func:`compare_main`).

Used by ``bench/table.py``; alone: ``.venv/bin/python bench/uploads.py [--runs 3]
[--size-mb 1024] [--json FILE]`` (every row against the durable copy of the same run; ``tus``:
the tus rows only; ``compare --base DIR [--runs 3] [--data DIR]``: this tree against another).
"""

from __future__ import annotations

import base64
import http.client
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.rows import DURABLE, BenchRow  # noqa: E402
from tests.e2e.conftest import Server, wait_ready  # noqa: E402  (the e2e server harness)

__all__ = [
    "api_roundtrips",
    "compare_main",
    "make_checkpoint",
    "measure",
    "server_cpu",
    "start_server",
    "tus_lean",
    "tus_rows",
    "tus_walls",
    "upload_commands",
]

TUS_PART = 64 * 1024 * 1024


def make_checkpoint(path: Path, size_mb: int) -> dict[str, Any]:
    """A safetensors file of ``size_mb`` in 64 MiB float32 tensors (or one smaller), and
    the skeleton it fits."""
    import torch
    from safetensors.torch import save_file

    rows = max(1, min(size_mb, 64) * 1024 * 1024 // 4 // 1024)
    count = max(1, size_mb // 64)
    gen = torch.Generator().manual_seed(0)
    tensors = {f"blocks.{i}.weight": torch.randn(rows, 1024, generator=gen) for i in range(count)}
    if not path.exists():
        save_file(tensors, str(path))
    return {
        "schema": "graft.skeleton/v1",
        "tensors": {
            k: {"shape": list(v.shape), "dtype": "float32", "kind": "parameter", "module": "Linear"}
            for k, v in tensors.items()
        },
    }


def start_server(root: Path, code: Path) -> Server:
    """A warm ``graft serve`` on ``root`` running the code under ``code`` (this tree, or a
    baseline's), one worker, uploads up to 2 GiB."""
    import subprocess

    root.mkdir(parents=True, exist_ok=True)
    server = Server(root, GRAFT_WORKERS="1", GRAFT_MAX_UPLOAD_BYTES=str(2 << 30))
    server.env["PYTHONPATH"] = str(code)
    with server.log.open("ab") as log:
        server.process = subprocess.Popen(
            [sys.executable, "-c", "from app.cli import main; main()", "serve",
             "--port", str(server.port)],
            cwd=code, env=server.env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    wait_ready(server.url, server.process, server.log)
    return server


def server_cpu(server: Server) -> float:
    """CPU seconds (user + sys) of the server's process tree so far: every live process under
    it (its threads included) and the children it has reaped."""
    import os

    assert server.process is not None
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                raw = (entry / "stat").read_text()
            except OSError:
                continue
            stats[int(entry.name)] = raw.rsplit(")", 1)[1].split()
    tree, grew = {server.process.pid}, True
    while grew:
        more = {pid for pid, f in stats.items() if int(f[1]) in tree} - tree
        tree |= more
        grew = bool(more)
    total = 0
    for pid in tree:
        f = stats.get(pid)
        if f is not None:  # fields 14-17: utime stime cutime cstime (index 11-14 here)
            total += sum(int(x) for x in f[11:15])
    return total / tick


def upload_commands(url: str, source: Path) -> dict[str, list[str]]:
    """The curl command lines of the two upload rows."""
    endpoint = f"{url}/v1/checkpoints"
    size = f"{source.stat().st_size / 1e9:.2f} GB"
    return {
        f"upload raw body {size} (curl -T, to the 201)": [
            "curl", "-sSf", "-o", "/dev/null", "-X", "POST", "-T", str(source),
            "-H", "Content-Type: application/octet-stream",
            f"{endpoint}?filename={source.name}",
        ],
        f"upload multipart {size} (curl -F, to the 201)": [
            "curl", "-sSf", "-o", "/dev/null", "-F", f"file=@{source}", endpoint,
        ],
    }  # fmt: skip


def api_roundtrips(server: Server, source: Path, skeleton: dict[str, Any], n: int) -> list[float]:
    """Seconds per end-to-end conversion: upload, job, poll to succeeded, download."""
    seconds: list[float] = []
    with httpx.Client(base_url=server.url, timeout=120) as client:
        for _ in range(n):
            start = time.perf_counter()
            with source.open("rb") as fh:
                r = client.post(f"/v1/checkpoints?filename={source.name}", content=fh.read())
            r.raise_for_status()
            job = client.post(
                "/v1/jobs", json={"source": r.json()["id"], "target": {"skeleton": skeleton}}
            )
            job.raise_for_status()
            job_id = job.json()["id"]
            while (status := client.get(f"/v1/jobs/{job_id}").json()["status"]) in (
                "queued",
                "running",
            ):
                time.sleep(0.02)
            if status != "succeeded":
                raise SystemExit(f"the e2e job {job_id} ended {status}")
            client.get(f"/v1/jobs/{job_id}/weights").raise_for_status()
            seconds.append(time.perf_counter() - start)
    return seconds


def _tus_request(
    url: str, method: str, path: str, headers: dict[str, str], body: tuple[Path, int, int] | None
) -> http.client.HTTPResponse | None:
    """One request on a fresh connection; ``body``: ``(file, start, length)`` sent with
    ``sendfile`` (no copy in this process), or, when ``length`` falls short of the
    ``Content-Length`` header, that much and then the connection is dropped (``None``)."""
    where = urlsplit(url)
    sock = socket.create_connection((where.hostname, where.port))
    head = [f"{method} {path} HTTP/1.1", f"Host: {where.netloc}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    if body is not None:
        source, start, length = body
        with source.open("rb") as fh:
            sent = 0
            while sent < length:
                sent += os.sendfile(sock.fileno(), fh.fileno(), start + sent, length - sent)
        if length < int(headers["Content-Length"]):
            sock.close()
            return None
    response = http.client.HTTPResponse(sock, method=method)
    response.begin()
    response.read()
    sock.close()
    return response


def _offset(url: str, path: str) -> int:
    head = _tus_request(url, "HEAD", path, {"Tus-Resumable": "1.0.0"}, None)
    assert head is not None and head.status == 200, head and head.status
    return int(head.getheader("Upload-Offset", "0"))


def tus_lean(url: str, source: Path, *, part: int = TUS_PART, cut_at: int | None = None) -> str:
    """A tus upload of ``source`` by a lean client (``sendfile``, one connection per
    request), so the client is never what is measured; with ``cut_at``, the PATCH holding
    that byte drops its connection there, and the upload is resumed from a HEAD.

    Returns:
        The checkpoint id the last PATCH answers.
    """
    size = source.stat().st_size
    tus = {"Tus-Resumable": "1.0.0"}
    name = base64.b64encode(source.name.encode()).decode()
    created = _tus_request(
        url, "POST", "/v1/uploads",
        {**tus, "Upload-Length": str(size), "Upload-Metadata": f"filename {name}",
         "Content-Length": "0"},
        None,
    )  # fmt: skip
    assert created is not None and created.status == 201, created and created.status
    path = urlsplit(created.getheader("Location", "")).path
    offset, checkpoint = 0, ""
    while offset < size:
        length = min(part, size - offset)
        headers = {**tus, "Content-Type": "application/offset+octet-stream",
                   "Upload-Offset": str(offset), "Content-Length": str(length)}  # fmt: skip
        if cut_at is not None and offset <= cut_at < offset + length:
            _tus_request(url, "PATCH", path, headers, (source, offset, cut_at - offset))
            cut_at = None
            for _ in range(1000):  # the server keeps what arrived once it sees the hang-up
                if (held := _offset(url, path)) > offset:
                    break
                time.sleep(0.005)
            offset = held
            continue
        done = _tus_request(url, "PATCH", path, headers, (source, offset, length))
        assert done is not None and done.status == 204, done and (done.status, done.read())
        offset = int(done.getheader("Upload-Offset", "0"))
        checkpoint = done.getheader("Graft-Checkpoint", "")
    return checkpoint


def tus_once(url: str, source: Path, *, cut: bool) -> float:
    """Seconds for one tus upload of ``source`` to its record (cut at 50 % and resumed)."""
    start = time.perf_counter()
    tus_lean(url, source, cut_at=source.stat().st_size // 2 if cut else None)
    return time.perf_counter() - start


def tus_walls(url: str, source: Path, copy: Path, runs: int) -> dict[str, float]:
    """Median seconds of ``runs`` tus uploads, uncut (``tus``) and cut at 50 % then resumed
    (``cut``), alternated with a durable copy of the same file (``durable``)."""
    import subprocess

    walls: dict[str, list[float]] = {"durable": [], "tus": [], "cut": []}
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(["sh", "-c", f'cp "{source}" "{copy}" && sync "{copy}"'], check=True)
        walls["durable"].append(time.perf_counter() - start)
        copy.unlink(missing_ok=True)
        walls["tus"].append(tus_once(url, source, cut=False))
        walls["cut"].append(tus_once(url, source, cut=True))
    return {k: statistics.median(v) for k, v in walls.items()}


def tus_rows(url: str, source: Path, copy: Path, runs: int) -> list[tuple[str, str, str, str]]:
    """The tus rows: medians of ``runs`` alternated with a durable copy of the same file.

    Returns:
        ``(row, wall s, x durable, x uncut tus)`` tuples.
    """
    walls = tus_walls(url, source, copy, runs)
    durable, tus, cut = walls["durable"], walls["tus"], walls["cut"]
    size = f"{source.stat().st_size / 1e9:.2f} GB"
    return [
        (f"cp + sync FILE {size} (durable)", f"{durable:.2f}", "1.00", "-"),
        (f"upload tus {size}, 64 MiB parts", f"{tus:.2f}", f"{tus / durable:.2f}", "1.00"),
        (f"upload tus {size}, cut at 50 % + resumed", f"{cut:.2f}", f"{cut / durable:.2f}",
         f"{cut / tus:.2f}"),
    ]  # fmt: skip


def tus_main(runs: int = 3) -> None:
    """Only the tus rows, on a fresh server."""
    import tempfile

    with tempfile.TemporaryDirectory(dir=REPO / "data") as tmp:
        root = Path(tmp)
        source = root / "upload.safetensors"
        make_checkpoint(source, 1024)
        server = Server(root / "srv", GRAFT_WORKERS="0", GRAFT_MAX_UPLOAD_BYTES=str(2 << 30))
        (root / "srv").mkdir()
        server.start()
        try:
            rows = tus_rows(server.url, source, root / "copy", runs)
        finally:
            server.stop()
    print(f"{'row':<44} {'wall s':>7} {'x durable':>9} {'x uncut':>8}")
    for row in rows:
        print(f"{row[0]:<44} {row[1]:>7} {row[2]:>9} {row[3]:>8}")


def measure(root: Path, runs: int, size_mb: int) -> list[BenchRow]:
    """The upload rows of ``make bench``: raw and multipart uploads of a ``size_mb`` file
    interleaved with a durable copy of it (the server's CPU, not curl's), the tus rows
    (uncut, cut and resumed) against their own durable copies, and the API end to end for a
    10 MB conversion (warm p50, goal 1 s)."""
    from bench.convert import Sample, median_of, run_once

    source = root / "upload.safetensors"
    make_checkpoint(source, size_mb)
    small = root / "small.safetensors"
    skeleton = make_checkpoint(small, 10)
    copy = root / "copy"
    server = start_server(root / "srv", REPO)
    goals = {"raw": 2.0, "multipart": 2.5}
    try:
        rows: dict[str, list[str]] = {
            DURABLE: ["sh", "-c", f'cp "{source}" "{copy}" && sync "{copy}"']
        }
        rows |= upload_commands(server.url, source)
        with source.open("rb") as fh:  # warm the page cache
            while fh.read(1 << 24):
                pass
        samples: dict[str, list[Sample]] = {k: [] for k in rows}
        for _ in range(runs):
            for label, cmd in rows.items():
                before = server_cpu(server)
                sample = run_once(cmd)
                if label != DURABLE:  # the server's CPU for this upload, not curl's
                    sample.cpu = server_cpu(server) - before
                samples[label].append(sample)
                copy.unlink(missing_ok=True)
        tus = tus_walls(server.url, source, copy, runs)
        e2e = api_roundtrips(server, small, skeleton, 10 * runs)
    finally:
        server.stop()
    durable = median_of(samples, DURABLE, "wall")
    size = f"{source.stat().st_size / 1e9:.2f} GB"
    out = [
        BenchRow(
            group="uploads", row=label, wall=median_of(samples, label, "wall"), baseline=DURABLE,
            baseline_wall=durable, runs=runs, cpu=median_of(samples, label, "cpu"),
            goal_ratio=next((g for k, g in goals.items() if k in label), None),
            note="CPU: the server's",
        )
        for label in rows
        if label != DURABLE
    ]  # fmt: skip
    out += [
        BenchRow(group="uploads", row=f"upload tus {size}, 64 MiB parts", wall=tus["tus"],
                 baseline=DURABLE, baseline_wall=tus["durable"], runs=runs, goal_ratio=2.5),
        BenchRow(group="uploads", row=f"upload tus {size}, cut at 50 % + resumed",
                 wall=tus["cut"], baseline=DURABLE, baseline_wall=tus["durable"], runs=runs,
                 note=f"x uncut tus {tus['cut'] / tus['tus']:.2f} (goal <= 1.10)"),
        BenchRow(group="uploads", row="API e2e 10 MB: upload+job+download, warm p50",
                 wall=statistics.median(e2e), baseline="-", baseline_wall=0.0, runs=10 * runs,
                 goal_wall=1.0, note=f"p90 {sorted(e2e)[int(0.9 * len(e2e))]:.2f} s"),
    ]  # fmt: skip
    return out


def main() -> None:
    import argparse
    import tempfile

    from bench.rows import write_rows

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--dir", type=Path, default=REPO / "data")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = measure(Path(tmp), args.runs, args.size_mb)
    print(f"{'row':<52} {'wall s':>7} {'x durable':>9} {'CPU s':>6}  goal")
    for r in rows:
        cpu = f"{r.cpu:.2f}" if r.cpu is not None else "-"
        print(f"{r.row:<52} {r.wall:>7.2f} {r.ratio:>9.2f} {cpu:>6}  {r.goal()} {r.note}")
    write_rows(args.json, rows)


def _timed(server: Server, run: Any) -> tuple[float, float]:
    """Wall seconds of ``run()`` and the server's CPU seconds meanwhile."""
    cpu = server_cpu(server)
    start = time.perf_counter()
    run()
    return time.perf_counter() - start, server_cpu(server) - cpu


def compare_main(base: Path, runs: int = 3, data: Path | None = None) -> None:
    """Every upload row on this tree's server and on ``base``'s, interleaved ``runs``
    times with a durable copy of the same 1 GB file; medians, ratios to the durable copy,
    and each server's CPU per upload."""
    import subprocess
    import tempfile

    folder = data or REPO / "data"
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        root = Path(tmp)
        source = folder / "upload-1g.safetensors"
        make_checkpoint(source, 1024)
        copy = root / "copy"
        servers = {
            "": start_server(root / "srv", REPO),
            " [base]": start_server(root / "base", base),
        }
        walls: dict[str, list[float]] = {}
        cpus: dict[str, list[float]] = {}
        try:
            with source.open("rb") as fh:  # warm the page cache
                while fh.read(1 << 24):
                    pass
            for _ in range(runs):
                start = time.perf_counter()
                subprocess.run(["sh", "-c", f'cp "{source}" "{copy}" && sync "{copy}"'], check=True)
                walls.setdefault("cp + sync FILE (durable)", []).append(time.perf_counter() - start)
                copy.unlink()
                for tag, server in servers.items():
                    rows: dict[str, Any] = {
                        label.split(" (")[0]: (lambda c=cmd: subprocess.run(c, check=True))
                        for label, cmd in upload_commands(server.url, source).items()
                    }
                    rows["upload tus 64 MiB parts"] = lambda u=server.url: tus_lean(u, source)
                    rows["upload tus, cut at 50 % + resumed"] = lambda u=server.url: tus_lean(
                        u, source, cut_at=source.stat().st_size // 2
                    )
                    for label, run in rows.items():
                        wall, cpu = _timed(server, run)
                        walls.setdefault(label + tag, []).append(wall)
                        cpus.setdefault(label + tag, []).append(cpu)
        finally:
            for server in servers.values():
                server.stop()
    durable = statistics.median(walls["cp + sync FILE (durable)"])
    print(f"{'row':<48} {'wall s':>7} {'x durable':>9} {'server cpu s':>12}   (medians of {runs})")
    for label in sorted(walls, key=lambda k: (k.replace(" [base]", ""), k)):
        wall = statistics.median(walls[label])
        cpu_s = f"{statistics.median(cpus[label]):.2f}" if label in cpus else "-"
        print(f"{label:<48} {wall:>7.2f} {wall / durable:>9.2f} {cpu_s:>12}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["compare"]:
        import argparse

        parser = argparse.ArgumentParser(prog="bench/uploads.py compare")
        parser.add_argument("--base", type=Path, required=True, help="baseline code to compare")
        parser.add_argument("--runs", type=int, default=3)
        parser.add_argument("--data", type=Path, default=None, help="where the 1 GB file goes")
        args = parser.parse_args(sys.argv[2:])
        compare_main(args.base.resolve(), args.runs, args.data)
    elif sys.argv[1:2] == ["tus"]:
        tus_main(int(sys.argv[2]) if len(sys.argv) > 2 else 3)
    else:
        main()
