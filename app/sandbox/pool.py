"""Long-lived sandbox children, reused call after call: for work that must answer at once.

A :class:`ChildPool` keeps ``size`` helper processes (``python -m app.sandbox.pool``) under
the sandbox's :class:`~app.sandbox.runner.Limits`, each having imported the caller's
``preload`` once. :meth:`ChildPool.call` runs any top-level ``function(payload, emit)`` in an
idle one, over JSON lines on stdin/stdout (``emit``'d events are dropped: a pooled call
reports no progress). A child that hangs past the timeout is killed, one that dies (a limit
hit) is replaced; either way the call fails and the parent is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from typing import Any

from app.errors import InternalError, TooLargeError
from app.sandbox.runner import (
    Limits,
    SandboxFunction,
    apply_limits,
    error_from_answer,
    failure_answer,
    function_ref,
    memory_budget,
    renew_cpu_limit,
    resolve_function,
)

__all__ = ["ChildLostError", "ChildPool", "ChildTimeoutError"]

logger = logging.getLogger(__name__)

_LINE_LIMIT = 1 << 30


class ChildTimeoutError(TooLargeError):
    """A pooled call ran past the pool's timeout; its child was killed."""

    def __init__(self, timeout: float) -> None:
        super().__init__(f"the work took longer than {timeout:g} s and was stopped")
        self.timeout = timeout


class ChildLostError(InternalError):
    """A pooled child died (or broke the protocol) during a call; it was replaced."""

    def __init__(self) -> None:
        super().__init__("the sandbox process died during the call")


_INLINE_ANSWER_BYTES = 256 * 1024


class _Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:
            raise EOFError("pooled child has no pipes")
        stdin.write(json.dumps(payload).encode() + b"\n")
        await stdin.drain()
        line = await stdout.readline()
        if not line:
            raise EOFError("pooled child exited")
        # A large answer (a 200,000-tensor header's summary is tens of MB) is decoded off the
        # event loop, which would otherwise stall every other request for seconds.
        if len(line) > _INLINE_ANSWER_BYTES:
            answer: dict[str, Any] = await asyncio.to_thread(json.loads, line)
        else:
            answer = json.loads(line)
        return answer

    def kill(self) -> None:
        """Kill the child and close its pipes now (not when the loop's garbage is collected,
        which would leave their file objects for whichever test or request runs then)."""
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()
        transport = getattr(self.process, "_transport", None)  # asyncio's, no public handle
        if transport is not None:
            transport.close()


class ChildPool:
    """A fixed number of long-lived sandbox children shared by all callers.

    Args:
        size: how many children run (and so how many calls run at once).
        timeout: seconds one call may take before its child is killed.
        limits: each child's resource limits (default: none); its CPU limit is renewed
            per call.
        preload: modules each child imports once, before its first call.
    """

    def __init__(
        self,
        *,
        size: int,
        timeout: float,
        limits: Limits | None = None,
        preload: tuple[str, ...] = (),
    ) -> None:
        self.size = size
        self.timeout = timeout
        self.limits = limits or Limits()
        self.preload = preload
        self._idle: asyncio.Queue[_Child] | None = None
        self._children: set[_Child] = set()

    async def _spawn(self) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.sandbox.pool",
            json.dumps({"limits": self.limits.as_dict(), "preload": list(self.preload)}),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        child = _Child(process)
        self._children.add(child)
        return child

    async def start(self) -> None:
        """Start the children (else the first call does)."""
        self._idle = asyncio.Queue()
        for _ in range(self.size):
            self._idle.put_nowait(await self._spawn())

    async def close(self) -> None:
        """Kill every child."""
        for child in list(self._children):
            with contextlib.suppress(ProcessLookupError):
                child.process.kill()
            with contextlib.suppress(Exception):
                await child.process.wait()
            child.kill()  # closes the pipes
        self._children.clear()

    async def call(
        self,
        function: SandboxFunction | str,
        payload: dict[str, Any],
        *,
        budget: int = 0,
        timeout: float | None = None,
    ) -> Any:
        """Run ``function(payload, emit)`` in an idle child and return its result.

        Args:
            function: a top-level function, or ``"package.module:name"``.
            payload: JSON-ready arguments.
            budget: address space the call may add to its child (0: only the limits).
            timeout: seconds this call may take (default: the pool's).

        Returns:
            The function's JSON-ready return value.

        Raises:
            ChildTimeoutError: the call ran past the timeout.
            ChildLostError: the child died during the call.
            GraftError: the function raised (its ``type``, ``message`` and ``rule`` kept).
        """
        request = {"function": function_ref(function), "payload": payload, "budget": budget}
        if self._idle is None:
            await self.start()
        assert self._idle is not None
        child = await self._idle.get()
        healthy = True
        try:
            answer = await asyncio.wait_for(child.request(request), timeout or self.timeout)
        except TimeoutError as exc:
            healthy = False
            raise ChildTimeoutError(timeout or self.timeout) from exc
        except (EOFError, BrokenPipeError, ConnectionResetError, ValueError) as exc:
            healthy = False
            raise ChildLostError() from exc
        except BaseException:
            # Cancelled mid-call (a caller that stopped waiting): the answer may still come,
            # and would be read as the next call's.
            healthy = False
            raise
        finally:
            if not healthy:
                child.kill()
                self._children.discard(child)
                child = await self._spawn()
            self._idle.put_nowait(child)
        if not answer.get("ok"):
            raise error_from_answer(answer)
        return answer.get("result")


# ------------------------------------------------------------------------------------------
# The child side.
# ------------------------------------------------------------------------------------------


def _drop(event: dict[str, Any]) -> None:
    del event  # a pooled call reports no progress


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        function = resolve_function(str(request["function"]))
        with memory_budget(int(request.get("budget") or 0)):
            return {"ok": True, "result": function(request.get("payload") or {}, _drop)}
    except Exception as exc:  # a limit, or a bug: neither may crash the pool
        answer = failure_answer(exc)
        if answer["type"] == "internal-error":
            logger.exception("pooled %s failed", request.get("function"))
        return {"ok": False, **answer}


def _child_main() -> None:
    # The protocol owns the real stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING)
    config = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
    for module in config.get("preload", []):
        __import__(module)  # pay the imports before the first call
    limits = Limits(**config.get("limits", {}))
    apply_limits(limits, renewable_cpu=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        renew_cpu_limit(limits.cpu_seconds)
        out.write(json.dumps(_answer(json.loads(line))) + "\n")
        out.flush()


if __name__ == "__main__":
    _child_main()
