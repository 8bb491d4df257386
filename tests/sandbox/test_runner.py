"""The sandbox's limits hold in a real child process, and its failures come back typed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from app.engine.errors import TooLargeError
from app.errors import InternalError
from app.sandbox.runner import DiskFullError, Limits, run_sandboxed

GiB = 1024**3


# Child-side functions: imported by name in the sandbox child.
def allocate(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> int:
    import torch

    emit({"event": "progress", "stage": "allocating", "fraction": 0.5})
    return int(torch.empty(payload["bytes"], dtype=torch.uint8).numel())


def write(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> int:
    with Path(payload["path"]).open("wb") as f:
        for _ in range(payload["chunks"]):
            f.write(bytes(64 * 1024))
    return int(payload["chunks"])


def spin(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> None:
    while True:
        pass


def open_many(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> int:
    handles = [Path(payload["path"]).open("rb") for _ in range(payload["count"])]  # noqa: SIM115
    return len(handles)


HERE = "tests.sandbox.test_runner"


def test_torch_works_under_the_default_style_limits() -> None:
    events: list[dict[str, Any]] = []
    limits = Limits(address_space=3 * GiB, cpu_seconds=30, file_size=1 << 20, open_files=64)
    result = run_sandboxed(
        f"{HERE}:allocate", {"bytes": 1 << 20}, limits=limits, on_event=events.append
    )
    assert result == 1 << 20
    assert events == [{"event": "progress", "stage": "allocating", "fraction": 0.5}]


def test_a_4_gib_allocation_fails_cleanly_under_the_address_space_limit() -> None:
    with pytest.raises(TooLargeError, match="more memory than the sandbox allows") as info:
        run_sandboxed(f"{HERE}:allocate", {"bytes": 4 * GiB}, limits=Limits(address_space=2 * GiB))
    assert info.value.type == "too-large"


def test_a_write_past_the_file_size_limit_is_disk_full(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    with pytest.raises(DiskFullError, match=r"does not fit \(the file-size limit\)") as info:
        run_sandboxed(
            f"{HERE}:write", {"path": str(path), "chunks": 32}, limits=Limits(file_size=1 << 20)
        )
    assert info.value.type == "disk-full"
    assert path.stat().st_size == 1 << 20  # stopped exactly at the limit


def test_a_cpu_hog_is_stopped_by_the_cpu_limit() -> None:
    with pytest.raises(TooLargeError, match=r"stopped by the sandbox \(CPU limit 1 s") as info:
        run_sandboxed(f"{HERE}:spin", {}, limits=Limits(cpu_seconds=1))
    assert info.value.type == "too-large"


def test_open_files_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with pytest.raises(InternalError, match="Too many open files") as info:
        run_sandboxed(
            f"{HERE}:open_many", {"path": str(path), "count": 100}, limits=Limits(open_files=32)
        )
    assert info.value.type == "internal-error"


def test_raising_from_tick_kills_the_child() -> None:
    class Stop(Exception):
        pass

    def tick() -> None:
        raise Stop

    with pytest.raises(Stop):
        run_sandboxed(f"{HERE}:spin", {}, limits=Limits(cpu_seconds=30), tick=tick)


def niceness(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> int:
    import os

    return os.getpriority(os.PRIO_PROCESS, 0)


def test_a_child_runs_at_the_niceness_its_limits_give() -> None:
    import os

    ours = os.getpriority(os.PRIO_PROCESS, 0)
    assert run_sandboxed(f"{HERE}:niceness", {}, limits=Limits(nice=ours + 3)) == ours + 3
    assert run_sandboxed(f"{HERE}:niceness", {}, limits=Limits()) == ours
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours
