"""The pool runs any top-level function in a warm child; a hung or dead child is replaced."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

import pytest

from app.engine.errors import InvalidRecipeError
from app.errors import GraftError
from app.sandbox.pool import ChildLostError, ChildPool, ChildTimeoutError
from app.sandbox.runner import Limits

Emit = Callable[[dict[str, Any]], None]


# Child-side functions: imported by name in the pooled child.
def pid(payload: dict[str, Any], emit: Emit) -> int:
    emit({"event": "progress"})  # dropped: a pooled call reports no progress
    return os.getpid() + int(payload.get("add", 0))


def refuse(payload: dict[str, Any], emit: Emit) -> None:
    raise InvalidRecipeError("no such op", rule="adapt[0]")


def spin(payload: dict[str, Any], emit: Emit) -> None:
    while True:
        pass


def die(payload: dict[str, Any], emit: Emit) -> None:
    os._exit(3)


def allocate(payload: dict[str, Any], emit: Emit) -> int:
    return len(bytearray(payload["bytes"]))


def _run(body: Callable[[ChildPool], Any], **kwargs: Any) -> Any:
    async def run() -> Any:
        pool = ChildPool(size=1, **{"timeout": 30.0, **kwargs})
        await pool.start()
        try:
            return await body(pool)
        finally:
            await pool.close()

    return asyncio.run(run())


def test_a_call_runs_in_the_same_warm_child_each_time() -> None:
    async def body(pool: ChildPool) -> list[int]:
        return [await pool.call(pid, {}), await pool.call(pid, {"add": 0})]

    first, second = _run(body)
    assert first == second != os.getpid()


def test_an_error_keeps_its_type_and_rule() -> None:
    async def body(pool: ChildPool) -> GraftError:
        with pytest.raises(GraftError) as caught:
            await pool.call(refuse, {})
        return caught.value

    error = _run(body)
    assert (error.type, error.message, error.rule) == (
        "invalid-recipe",
        "adapt[0]: no such op",
        "adapt[0]",
    )


def test_a_hung_child_is_killed_and_replaced() -> None:
    async def body(pool: ChildPool) -> tuple[ChildTimeoutError, int, int]:
        before = await pool.call(pid, {})
        with pytest.raises(ChildTimeoutError) as caught:
            await pool.call(spin, {}, timeout=1.0)
        # The replacement's first call includes its start: the pool's own (long) timeout.
        return caught.value, before, await pool.call(pid, {})

    error, before, after = _run(body)
    assert error.type == "too-large" and before != after


def test_a_dead_child_is_replaced() -> None:
    async def body(pool: ChildPool) -> tuple[int, int]:
        before = await pool.call(pid, {})
        with pytest.raises(ChildLostError):
            await pool.call(die, {})
        return before, await pool.call(pid, {})

    before, after = _run(body)
    assert before != after


def test_a_budget_bounds_one_call_only() -> None:
    async def body(pool: ChildPool) -> tuple[GraftError, int]:
        with pytest.raises(GraftError) as caught:
            await pool.call(allocate, {"bytes": 512 * 1024**2}, budget=64 * 1024**2)
        return caught.value, await pool.call(allocate, {"bytes": 512 * 1024**2})

    error, allocated = _run(body, limits=Limits(address_space=0))
    assert error.type == "too-large" and allocated == 512 * 1024**2


def test_only_top_level_functions_cross() -> None:
    async def body(pool: ChildPool) -> None:
        await pool.call(lambda payload, emit: None, {})

    with pytest.raises(ValueError, match="top-level functions only"):
        _run(body)


def niceness(payload: dict[str, Any], emit: Emit) -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)


def test_a_child_runs_niced_and_its_parent_does_not() -> None:
    # The parent (the API, a worker's own process) holds the database's write lock: only the
    # child doing the heavy work yields the CPU (issue 23: a niced lock holder stalled writes).
    ours = os.getpriority(os.PRIO_PROCESS, 0)

    async def body(pool: ChildPool) -> list[int]:
        return [await pool.call(niceness, {}), await pool.call(niceness, {})]

    assert _run(body, limits=Limits(nice=ours + 5)) == [ours + 5, ours + 5]  # not cumulative
    assert os.getpriority(os.PRIO_PROCESS, 0) == ours
