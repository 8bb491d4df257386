"""The hostile phases of ``bench/load.py``: stalled uploads, deletes, dead workers' leases."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import struct
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.probes import footprint
from tests.e2e.conftest import Server

__all__ = ["deletes_phase", "leases_phase", "stalled_phase"]


def _print_footprint(server: Server, label: str) -> None:
    assert server.process is not None
    print(f"[{label}] {footprint(server.process.pid, server.root / 'blobs' / 'tmp').line()}")


async def _stall(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/checkpoints?filename=stalled.pt HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/octet-stream\r\nContent-Length: 10000000\r\n\r\nPK\x03\x04"
    )
    await writer.drain()
    return reader, writer


async def _status(reader: asyncio.StreamReader, timeout: float) -> str:
    try:
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        return "open"
    return line.split(b" ")[1].decode() if line.startswith(b"HTTP/1.1 ") else "closed"


async def stalled_phase(server: Server, count: int) -> None:
    """Open ``count`` uploads that stall after 4 bytes; report their cost and their fate."""
    _print_footprint(server, "before stalled uploads")
    conns = await asyncio.gather(*(_stall(server.port) for _ in range(count)))
    start = time.monotonic()
    await asyncio.sleep(2)
    _print_footprint(server, f"{count} stalled uploads held 2 s")
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
        t = time.perf_counter()
        ok = (await http.get("/v1/jobs?limit=5")).status_code
        print(f"  GET /v1/jobs meanwhile: {ok} in {(time.perf_counter() - t) * 1000:.1f} ms")
    fates = await asyncio.gather(*(_status(r, 120) for r, _ in conns))
    cleared = time.monotonic() - start
    tally: dict[str, int] = {}
    for fate in fates:
        tally[fate] = tally.get(fate, 0) + 1
    print(f"  answers: {tally}; every stalled upload answered within {cleared:.1f} s")
    for _, writer in conns:
        writer.close()
    await asyncio.sleep(0.5)


def _safetensors(seed: int, size: int) -> bytes:
    header = f'{{"w":{{"dtype":"U8","shape":[{size}],"data_offsets":[0,{size}]}}}}'.encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + os.urandom(size - 8) + struct.pack("<Q", seed)


def _store_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / "blobs" / "sha256").rglob("*") if p.is_file())


async def deletes_phase(server: Server, count: int, size: int = 8 * 1024**2) -> None:
    """Upload ``count`` distinct files, delete them, and time how soon the disk is freed."""
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as http:
        before = _store_bytes(server.root)
        ids = []
        for i in range(count):
            r = await http.post(
                f"/v1/checkpoints?filename=d{i}.safetensors", content=_safetensors(i, size)
            )
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        full = _store_bytes(server.root)
        start = time.monotonic()
        for checkpoint in ids:
            assert (await http.delete(f"/v1/checkpoints/{checkpoint}")).status_code == 204
        deleted = time.monotonic() - start
        while _store_bytes(server.root) > before and time.monotonic() - start < 60:
            await asyncio.sleep(0.1)
        after = _store_bytes(server.root)
    print(
        f"deletes: {count} x {size / 1024**2:.0f} MiB uploaded "
        f"({(full - before) / 1024**2:.0f} MiB on disk), deleted in {deleted:.2f} s; "
        f"{(full - after) / 1024**2:.0f} MiB freed "
        f"{time.monotonic() - start:.1f} s after the first DELETE (GRAFT_BLOB_CLAIM_SECONDS=2)"
    )


async def leases_phase(root: Path, count: int) -> None:
    """A server with no workers; ``count`` running jobs whose worker died: time to settle."""
    server = Server(root, GRAFT_WORKERS="0", GRAFT_MAINTENANCE_SECONDS="5")
    server.start()
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            r = await http.post(
                "/v1/checkpoints?filename=l.safetensors", content=_safetensors(0, 64)
            )
            body = {"source": r.json()["id"], "target": {"checkpoint": r.json()["id"]}}
            jobs = [(await http.post("/v1/jobs", json=body)).json()["id"] for _ in range(count)]
            lapsed = (datetime.now(UTC) - timedelta(seconds=1)).replace(tzinfo=None)
            with sqlite3.connect(root / "graft.db") as db:
                for i, job in enumerate(jobs):  # half with attempts left, half without
                    attempts = "1" if i % 2 else "max_attempts"
                    db.execute(
                        "update jobs set status='running', lease_owner='dead', "
                        f"attempts={attempts}, lease_expires_at=? where id=?",
                        (lapsed.isoformat(sep=" "), job),
                    )
            start = time.monotonic()
            while True:
                page = (await http.get("/v1/jobs?status=running&limit=1")).json()
                if page["count"] == 0 or time.monotonic() - start > 60:
                    break
                await asyncio.sleep(0.1)
            settled = time.monotonic() - start
            queued = (await http.get("/v1/jobs?status=queued&limit=1")).json()["count"]
            failed = (await http.get("/v1/jobs?status=failed&limit=1")).json()["count"]
        print(
            f"leases: {count} jobs of a dead worker, no worker running: settled in {settled:.1f} s "
            f"by the API's timer (GRAFT_MAINTENANCE_SECONDS=5): {queued} re-queued, {failed} "
            "failed worker-lost"
        )
    finally:
        server.stop()
