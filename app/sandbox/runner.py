"""The sandbox: run a function in a child process with resource limits.

One-shot children (:func:`run_sandboxed`, forked from a fork server that imported the
caller's ``preload`` once) and long-lived ones (``app.sandbox.pool``) apply the same
:class:`Limits`: address space, CPU time, file size and open files. The function run is
named by the caller (``"module:name"``, or a top-level function); this package knows no use
case. The engine's readers have their own restricted unpickler; the limits are the second
wall, for what a well-formed but hostile file can still ask of a process.

Messages from a child are JSON, never pickles: a child that was somehow subverted can lie
about its result, but cannot run code in its parent.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import logging
import math
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from app.errors import GraftError, InternalError, TooLargeError

__all__ = [
    "DiskFullError",
    "Limits",
    "SandboxFunction",
    "apply_limits",
    "describe_failure",
    "error_from_answer",
    "failure_answer",
    "function_ref",
    "memory_budget",
    "renew_cpu_limit",
    "resolve_function",
    "run_sandboxed",
    "start_fork_server",
]

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 256 * 1024 * 1024
_CPU_GRACE = 5  # seconds between SIGXCPU (soft limit) and SIGKILL (hard limit)


@dataclass(frozen=True)
class Limits:
    """Resource limits of a sandbox child; 0 means unlimited.

    Attributes:
        address_space: RLIMIT_AS in bytes (allocations past it raise MemoryError).
        cpu_seconds: RLIMIT_CPU, counted from when the limits are applied.
        file_size: RLIMIT_FSIZE in bytes (writes past it fail with EFBIG).
        open_files: RLIMIT_NOFILE.
        nice: the child's niceness, at least (0: as its parent). A child does the heavy
            work (parsing a header, converting); the processes that hold the database's
            write lock (the API, a worker's own process) stay at theirs, so a child never
            slows them and a niced lock holder never stalls everyone else's writes.
    """

    address_space: int = 0
    cpu_seconds: int = 0
    file_size: int = 0
    open_files: int = 0
    nice: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def _lower(resource_id: int, value: int, *, keep_hard: bool = False) -> None:
    import resource

    if value <= 0:
        return
    _soft, hard = resource.getrlimit(resource_id)
    if hard != resource.RLIM_INFINITY:
        value = min(value, hard)
    resource.setrlimit(resource_id, (value, hard if keep_hard else value))


def apply_limits(limits: Limits, *, renewable_cpu: bool = False) -> None:
    """Apply ``limits`` to the calling process (a sandbox child, never the API or a worker).

    Args:
        limits: what to apply.
        renewable_cpu: set only the soft CPU limit, relative to the CPU used so far, so a
            long-lived child can renew it per request (see :func:`renew_cpu_limit`).
    """
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # A write past RLIMIT_FSIZE then fails with EFBIG (a clean error) instead of killing us.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _lower(resource.RLIMIT_AS, limits.address_space)
    _lower(resource.RLIMIT_FSIZE, limits.file_size)
    _lower(resource.RLIMIT_NOFILE, limits.open_files)
    if limits.nice > 0:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, max(current, limits.nice)))
    if renewable_cpu:
        renew_cpu_limit(limits.cpu_seconds)
    elif limits.cpu_seconds > 0:
        soft = _cpu_used() + limits.cpu_seconds
        resource.setrlimit(resource.RLIMIT_CPU, (soft, soft + _CPU_GRACE))


def _cpu_used() -> int:
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return math.ceil(usage.ru_utime + usage.ru_stime)


def renew_cpu_limit(cpu_seconds: int) -> None:
    """Give a long-lived child ``cpu_seconds`` more CPU time from now (soft limit only)."""
    import resource

    if cpu_seconds <= 0:
        return
    _soft, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = _cpu_used() + cpu_seconds
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _address_space() -> int:
    """This process's mapped address space in bytes (Linux), or 0 when unknown."""
    try:
        with Path("/proc/self/statm").open() as fh:
            return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


@contextlib.contextmanager
def memory_budget(extra_bytes: int) -> Iterator[None]:
    """Cap the address space at what is mapped now plus ``extra_bytes``, for the block only.

    A long-lived child (a pooled one) may have imported torch for another kind of call;
    counting from its current size gives every request the same budget. Only the soft limit
    moves, so it is raised back to the hard limit afterwards. 0 means no budget.
    """
    import resource

    current = _address_space()
    if extra_bytes <= 0 or current == 0:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    budget = current + extra_bytes
    if hard != resource.RLIM_INFINITY:
        budget = min(budget, hard)
    resource.setrlimit(resource.RLIMIT_AS, (budget, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class DiskFullError(GraftError):
    """The output did not fit: the sandbox's file-size limit, or the disk itself."""

    type = "disk-full"


# What a child runs: ``function(payload, emit)``, with JSON-ready payload and result.
SandboxFunction = Callable[[dict[str, Any], Callable[[dict[str, Any]], None]], Any]


def function_ref(function: SandboxFunction | str) -> str:
    """``"module:name"`` of a top-level function (kept as is when already a string).

    Raises:
        ValueError: a lambda, a nested function or a method: a child cannot import it.
    """
    if isinstance(function, str):
        return function
    name = function.__qualname__
    if "<" in name or "." in name:
        raise ValueError(f"a sandbox runs top-level functions only, not {name}")
    return f"{function.__module__}:{name}"


def resolve_function(ref: str) -> SandboxFunction:
    """The function ``"module:name"`` names (imported in the child)."""
    module, name = ref.split(":")
    function: SandboxFunction = getattr(importlib.import_module(module), name)
    return function


def describe_failure(exc: BaseException) -> GraftError:
    """The error to report for an exception raised inside a sandbox child."""
    if isinstance(exc, GraftError):
        return exc
    if isinstance(exc, MemoryError) or (
        isinstance(exc, RuntimeError) and "alloc" in str(exc).lower()
    ):
        return TooLargeError("the work needed more memory than the sandbox allows")
    if isinstance(exc, OSError) and exc.errno in (errno.EFBIG, errno.ENOSPC, errno.EDQUOT):
        what = "the file-size limit" if exc.errno == errno.EFBIG else "the disk"
        return DiskFullError(f"writing the output failed: it does not fit ({what}): {exc.strerror}")
    return InternalError(f"{type(exc).__name__}: {str(exc)[:300]}")


def failure_answer(exc: BaseException) -> dict[str, Any]:
    """The JSON a child sends its parent for ``exc``: ``type``, ``message`` (and ``rule``)."""
    return describe_failure(exc).to_payload()


# ------------------------------------------------------------------------------------------
# One-shot children (conversions).
# ------------------------------------------------------------------------------------------

_contexts: dict[tuple[str, ...], Any] = {}


def _context(preload: tuple[str, ...]) -> Any:
    ctx = _contexts.get(preload)
    if ctx is None:
        # A fork server: forked from a clean, single-threaded process that imported the
        # engine (torch) once, so each job starts in milliseconds and shares no DB handles.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["app.sandbox.runner", *preload])
        _contexts[preload] = ctx
    return ctx


def start_fork_server(preload: tuple[str, ...]) -> None:
    """Start the fork server of ``preload`` now, without waiting: it imports its modules
    (torch) in its own process while the caller goes on, and the first
    :func:`run_sandboxed` with the same ``preload`` uses it."""
    from multiprocessing import forkserver

    _context(preload)
    forkserver.ensure_running()


def _child(
    conn: Connection, function: str, payload: dict[str, Any], limits: dict[str, int]
) -> None:
    def emit(message: dict[str, Any]) -> None:
        conn.send_bytes(json.dumps(message).encode())

    try:
        apply_limits(Limits(**limits))
        result = resolve_function(function)(payload, emit)
        emit({"event": "result", "result": result})
    except BaseException as exc:
        answer = failure_answer(exc)
        if answer["type"] == InternalError.type:
            logger.exception("sandboxed %s failed", function)
        try:
            emit({"event": "error", **answer})
        except Exception:
            logger.exception("sandbox: cannot report the failure")
    finally:
        conn.close()


def _exit_failure(exitcode: int | None, limits: Limits) -> GraftError:
    if exitcode in (-signal.SIGXCPU, -signal.SIGKILL) and limits.cpu_seconds:
        return TooLargeError(
            f"the work was stopped by the sandbox (CPU limit {limits.cpu_seconds} s, or memory)",
        )
    if exitcode is not None and exitcode < 0:
        return InternalError(f"the sandbox process was killed by {signal.Signals(-exitcode).name}")
    return InternalError(f"the sandbox process exited with code {exitcode}")


def run_sandboxed(
    function: SandboxFunction | str,
    payload: dict[str, Any],
    *,
    limits: Limits,
    preload: tuple[str, ...] = (),
    on_event: Callable[[dict[str, Any]], None] | None = None,
    tick: Callable[[], None] | None = None,
    poll_seconds: float = 0.1,
) -> Any:
    """Run ``function(payload, emit)`` in a fresh child under ``limits``.

    Args:
        function: a top-level function, or ``"package.module:name"``; it receives the
            JSON-ready ``payload`` and an ``emit(dict)`` that sends events to the parent.
        payload: JSON-ready arguments.
        limits: the child's resource limits.
        preload: modules the fork server imports once (e.g. the engine).
        on_event: called in the parent with each event the child emits.
        tick: called in the parent about every ``poll_seconds``; raising from it (or from
            ``on_event``) kills the child and propagates.

    Returns:
        The function's JSON-ready return value.

    Raises:
        GraftError: the function raised (as its class again), or the child died.
    """
    ctx = _context(preload)
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=_child,
        args=(sender, function_ref(function), payload, limits.as_dict()),
        daemon=True,
    )
    process.start()
    sender.close()
    outcome: dict[str, Any] | None = None
    try:
        while True:
            if receiver.poll(poll_seconds):
                try:
                    raw = receiver.recv_bytes(_MAX_MESSAGE)
                except (EOFError, OSError):
                    break
                message = json.loads(raw)
                if message.get("event") in ("result", "error"):
                    outcome = message
                elif on_event is not None:
                    on_event(message)
            elif tick is not None:
                tick()
        process.join()
    except BaseException:
        process.kill()
        process.join()
        raise
    finally:
        receiver.close()
    if outcome is None:
        raise _exit_failure(process.exitcode, limits)
    if outcome["event"] == "error":
        raise error_from_answer(outcome)
    return outcome["result"]


def error_from_answer(answer: dict[str, Any]) -> GraftError:
    """The error a child's failure answer (:func:`failure_answer`) stands for, as its class."""
    return GraftError.from_payload(answer)
