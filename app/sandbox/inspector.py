"""Checkpoint inspection in child processes, never in the API process.

Untrusted uploads are parsed by the engine inside long-lived helper processes
(``python -m app.sandbox.inspector``), one request at a time each, speaking JSON lines
over stdin/stdout, under the sandbox's resource limits (``app.sandbox.runner``). A child
that hangs past the timeout is killed, one that dies (a limit hit) is replaced; either way
the upload is refused and the API process is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.engine.architectures import ArchitectureRef
from app.engine.errors import GraftError, TooLargeError, UnreadableCheckpointError
from app.errors import InternalError
from app.sandbox.runner import (
    Limits,
    apply_limits,
    describe_failure,
    error_from_child,
    memory_budget,
    renew_cpu_limit,
)

__all__ = ["InspectorPool", "inspect_in_child"]

logger = logging.getLogger(__name__)

_LINE_LIMIT = 1 << 30


def _refusal(error: GraftError) -> dict[str, Any]:
    """A child's answer for a refusal: the error's type and message, and its rule if any."""
    answer: dict[str, Any] = {"ok": False, "type": error.type, "message": error.message}
    rule = error.extra.get("rule")
    return answer | ({"rule": rule} if rule else {})


class _Child:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    async def request(self, payload: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self.process.stdin, self.process.stdout
        if stdin is None or stdout is None:
            raise EOFError("inspector has no pipes")
        stdin.write(json.dumps(payload).encode() + b"\n")
        await stdin.drain()
        line = await stdout.readline()
        if not line:
            raise EOFError("inspector exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.process.kill()


class InspectorPool:
    """A fixed number of inspection processes shared by all requests.

    Args:
        size: how many children run (and so how many inspections run at once).
        timeout: seconds one inspection may take before its child is killed.
        limits: each child's resource limits (default: none).
        max_tensors: most tensors one checkpoint may hold.
        memory_budget: address space one inspection may add to its child (0: only
            ``limits``). Inspection reads headers, never tensor data, so this is far below
            what a conversion gets.
    """

    def __init__(
        self,
        *,
        size: int,
        timeout: float,
        limits: Limits | None = None,
        max_tensors: int | None = None,
        memory_budget: int = 0,
    ) -> None:
        self.size = size
        self.memory_budget = memory_budget
        self.timeout = timeout
        self.limits = limits or Limits()
        self.max_tensors = max_tensors
        self._idle: asyncio.Queue[_Child] | None = None
        self._children: set[_Child] = set()

    async def _spawn(self) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "app.sandbox.inspector",
            json.dumps(self.limits.as_dict()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=_LINE_LIMIT,
        )
        child = _Child(process)
        self._children.add(child)
        return child

    async def start(self) -> None:
        self._idle = asyncio.Queue()
        for _ in range(self.size):
            self._idle.put_nowait(await self._spawn())

    async def close(self) -> None:
        for child in list(self._children):
            child.kill()
            with contextlib.suppress(Exception):
                await child.process.wait()
        self._children.clear()

    async def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self._idle is None:
            await self.start()
        assert self._idle is not None
        child = await self._idle.get()
        healthy = True
        try:
            return await asyncio.wait_for(child.request(payload), self.timeout)
        except TimeoutError as exc:
            healthy = False
            raise TooLargeError(
                f"inspection took longer than {self.timeout:g} s and was stopped"
            ) from exc
        except (EOFError, BrokenPipeError, ConnectionResetError, ValueError) as exc:
            healthy = False
            raise UnreadableCheckpointError(
                "the inspection process died reading this file"
            ) from exc
        finally:
            if not healthy:
                child.kill()
                self._children.discard(child)
                child = await self._spawn()
            self._idle.put_nowait(child)

    async def inspect(
        self, files: list[Path], *, names: list[str] | None = None, entry: str = "auto"
    ) -> dict[str, Any]:
        """Describe a checkpoint (one file, or the files of a sharded set).

        Args:
            files: the staged files.
            names: the names they were uploaded with (default: their own), so a sharded
                set's index can name its shards whatever they are staged as.
            entry: which dict holds the weights (SPEC §1).

        Returns:
            The engine's ``inspect_source`` summary.

        Raises:
            GraftError: the engine refused the file, or the child died or hung.
        """
        answer = await self._call(
            {
                "op": "inspect",
                "files": [str(p) for p in files],
                "names": names or [p.name for p in files],
                "entry": entry,
                "max_tensors": self.max_tensors,
                "memory_budget": self.memory_budget,
            }
        )
        if not answer.get("ok"):
            raise error_from_child(
                answer.get("type", UnreadableCheckpointError.type), answer.get("message")
            )
        result: dict[str, Any] = answer["result"]
        return result

    async def architectures(self, *, extra: Sequence[ArchitectureRef] = ()) -> list[dict[str, Any]]:
        """The engine's registered architectures (asked of a child: no torch import here).

        Args:
            extra: more architectures, (name, module, factory) triples (``GRAFT_ARCHITECTURES``).
        """
        answer = await self._call({"op": "architectures", "extra": extra})
        if not answer.get("ok"):
            raise error_from_child(answer.get("type"), answer.get("message"))
        result: list[dict[str, Any]] = answer["result"]
        return result

    async def plan(
        self,
        source: list[Path],
        target: dict[str, Any],
        *,
        target_files: list[Path],
        recipe: dict[str, Any] | None,
        extra: Sequence[ArchitectureRef] = (),
    ) -> dict[str, Any]:
        """A dry run, from headers alone: the report a conversion would produce.

        Args:
            source: the source's staged files.
            target: the target spec as data (checkpoint, skeleton or architecture).
            target_files: a checkpoint target's staged files; else empty.
            recipe: the recipe as data (None: the defaults).
            extra: more architectures, (name, module, factory) triples.

        Returns:
            The ``graft.report/v1`` document of the dry run (``ok`` false when the recipe's
            policy would refuse the conversion).

        Raises:
            GraftError: an invalid recipe or target, an unreadable or unsafe file, or
                a plan that ran past the timeout.
        """
        answer = await self._call(
            {
                "op": "plan",
                "files": [str(p) for p in source],
                "target": target,
                "target_files": [str(p) for p in target_files],
                "recipe": recipe,
                "extra": extra,
            }
        )
        if not answer.get("ok"):
            raise error_from_child(
                answer.get("type"), answer.get("message"), rule=answer.get("rule")
            )
        result: dict[str, Any] = answer["result"]
        return result

    async def check_architecture(
        self, name: str, kwargs: dict[str, Any], *, extra: Sequence[ArchitectureRef] = ()
    ) -> None:
        """Bind ``name`` with ``kwargs`` in a child, exactly as the worker will.

        Raises:
            GraftError: ``invalid-target``, naming the architecture and the kwarg.
        """
        answer = await self._call(
            {"op": "bind-architecture", "name": name, "kwargs": kwargs, "extra": extra}
        )
        if not answer.get("ok"):
            raise error_from_child(answer.get("type"), answer.get("message"))


# ------------------------------------------------------------------------------------------
# The child side.
# ------------------------------------------------------------------------------------------


def _extra(request: dict[str, Any]) -> tuple[ArchitectureRef, ...]:
    """The request's architecture triples, back from JSON's lists."""
    return tuple((name, module, attr) for name, module, attr in request.get("extra") or ())


def _list_architectures(extra: Sequence[ArchitectureRef]) -> list[dict[str, Any]]:
    from app.engine.architectures import describe_architectures

    return describe_architectures(extra)


def _plan(request: dict[str, Any]) -> dict[str, Any]:
    """A dry run in this child: header-only, nothing written."""
    from app.engine.pipeline import convert
    from app.engine.recipe import load_recipe
    from app.engine.target import Target
    from app.engine.target_spec import parse_target_spec

    recipe = load_recipe(request.get("recipe"))
    spec = parse_target_spec(request["target"])
    files = [Path(p) for p in request.get("target_files") or []]
    target_files = (files[0] if len(files) == 1 else files) if files else None
    source = [Path(p) for p in request["files"]]
    target = Target.from_spec(spec, files=target_files, architectures=_extra(request))
    with target:
        result = convert(
            source[0] if len(source) == 1 else source,
            target,
            recipe,
            output=None,
            dry_run=True,
        )
    return result.report


def _handle(request: dict[str, Any]) -> dict[str, Any]:
    from app.engine.readers import inspect_source

    try:
        if request.get("op") == "architectures":
            return {"ok": True, "result": _list_architectures(_extra(request))}
        if request.get("op") == "bind-architecture":
            from app.engine.architectures import bind_architecture

            bind_architecture(request["name"], request.get("kwargs"), extra=_extra(request))
            return {"ok": True, "result": None}
        if request.get("op") == "plan":
            return {"ok": True, "result": _plan(request)}
        files = [Path(p) for p in request["files"]]
        names = request.get("names") or [p.name for p in files]
        source: Path | dict[str, Path] = (
            files[0] if len(files) == 1 else dict(zip(names, files, strict=True))
        )
        with memory_budget(int(request.get("memory_budget") or 0)):
            summary = inspect_source(source, entry=request.get("entry", "auto"))
        if not summary["tensors"]:
            # An upload is only worth a record if it holds weights: an empty header, or a
            # pickle of an empty dict, is refused like any unreadable file.
            return _refusal(UnreadableCheckpointError("the checkpoint holds no tensors"))
        cap = request.get("max_tensors")
        if cap is not None and len(summary["tensors"]) > cap:
            return _refusal(
                TooLargeError(
                    f"the checkpoint holds {len(summary['tensors'])} tensors; "
                    f"this service accepts at most {cap} (GRAFT_MAX_TENSORS)"
                )
            )
        return {"ok": True, "result": summary}
    except Exception as exc:  # a refusal, a limit, or an engine bug: none may crash the pool
        error = describe_failure(exc)
        if isinstance(error, InternalError):
            logger.exception("inspection failed")
            error = UnreadableCheckpointError(f"cannot read: {exc}")
        return _refusal(error)


def inspect_in_child(payload: dict[str, Any], emit: Any) -> dict[str, Any]:
    """Inspect files in a one-off sandbox child (``run_sandboxed``), exactly as an upload is.

    For processes without an :class:`InspectorPool` (a worker fetching a source by
    reference). ``payload`` holds ``files``, ``entry`` and ``max_tensors``.

    Returns:
        ``{"ok": True, "result": summary}`` or ``{"ok": False, "type", "message"}``.
    """
    del emit  # inspection reports no progress
    return _handle({**payload, "op": "inspect"})


def _child_main() -> None:
    # The protocol owns the real stdout; anything else printed goes to stderr.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.WARNING)
    import app.engine.readers  # noqa: F401  (pay the imports before the first request)

    limits = Limits(**json.loads(sys.argv[1])) if len(sys.argv) > 1 else Limits()
    apply_limits(limits, renewable_cpu=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        renew_cpu_limit(limits.cpu_seconds)
        answer = _handle(json.loads(line))
        out.write(json.dumps(answer) + "\n")
        out.flush()


if __name__ == "__main__":
    _child_main()
