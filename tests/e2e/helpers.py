"""Tiny real models for the end-to-end tests."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import httpx
import torch
from torch import nn

T = TypeVar("T")

# Ready means a worker is warm (torch imported): ~21 s before /readyz on a loaded 2-core
# machine, more under xdist. Generous, since waiting returns as soon as the server is ready.
READY_SECONDS = 180


def until(predicate: Callable[[], T | None], timeout: float = 30) -> T:
    """The first truthy value ``predicate`` returns, polled every 50 ms; TimeoutError after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError


def settled(check: Callable[[], object], timeout: float = 30) -> None:
    """Run ``check`` (which asserts) until it passes, every 50 ms; after ``timeout`` seconds
    its last AssertionError is raised."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            check()
            return
        except AssertionError:
            if time.monotonic() >= deadline:
                raise
        time.sleep(0.05)


def wait_ready(
    url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = READY_SECONDS
) -> None:
    """Return once ``url``/readyz answers 200; RuntimeError at once if ``process`` exits, or
    after ``timeout`` seconds, with the end of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"graft serve exited:\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"graft serve did not become ready in {timeout} s:\n{log.read_text()[-4000:]}"
    )


def children(pid: int) -> set[int]:
    """The ids of ``pid``'s living child processes (Linux /proc)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def gone(pids: set[int]) -> bool:
    """True once none of ``pids`` is alive (a zombie counts as gone)."""
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            return False
    return True


def net(seed: int, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, classes))


def saved(module: nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


def assert_consistent(root: Path) -> None:
    """Records and blobs agree, nothing is left in tmp/, no job is running past its lease."""
    with sqlite3.connect(root / "graft.db") as conn:
        recorded = {
            row[0]
            for row in conn.execute(
                "select sha256 from checkpoint_files union select sha256 from artifacts"
            )
        }
        now = datetime.now(UTC).replace(tzinfo=None).isoformat(sep=" ")
        stuck = conn.execute(
            "select id from jobs where status = 'running' and lease_expires_at < ?", (now,)
        ).fetchall()
    blobs = {p.name for p in (root / "blobs" / "sha256").rglob("*") if p.is_file()}
    assert recorded - blobs == set(), "records pointing at missing files"
    assert blobs - recorded == set(), "published files without a record"
    assert list((root / "blobs" / "tmp").iterdir()) == []
    assert stuck == []
