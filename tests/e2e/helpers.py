"""Tiny real models for the end-to-end tests."""

from __future__ import annotations

import io
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn

T = TypeVar("T")


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
