"""Reading uploads in sandbox children, never in the API process: inspect, list, bind, plan,
align.

An :class:`InspectorPool` is a :class:`~app.sandbox.pool.ChildPool` of warm children (the
engine's readers imported once) under the inspection limits and timeout. It inspects a
checkpoint's headers and lists and binds architectures (the child functions of
:mod:`app.services.inspection`), and plans a conversion: a plan is a dry-run
:class:`~app.services.conversion.ConversionRequest` run through
:func:`~app.services.conversion.run_conversion_pooled`, the same child function a job runs.
A child that hangs or dies refuses the file; the API process is untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from app.engine.architectures import ArchitectureRef
from app.engine.errors import UnreadableCheckpointError
from app.errors import GraftError, InternalError, TooLargeError
from app.sandbox.pool import ChildLostError, ChildPool, ChildTimeoutError
from app.sandbox.runner import Limits
from app.services.conversion import (
    ConversionOutcome,
    ConversionRequest,
    PathSink,
    run_conversion_pooled,
)
from app.services.inspection import (
    align_in_child,
    architectures_in_child,
    bind_in_child,
    inspect_in_child,
)

__all__ = ["InspectorPool"]


class InspectorPool:
    """A fixed number of inspection children shared by all requests.

    Args:
        size: how many children run (and so how many inspections run at once).
        timeout: seconds one inspection (or plan) may take before its child is killed.
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
        self.max_tensors = max_tensors
        self.memory_budget = memory_budget
        self.pool = ChildPool(
            size=size,
            timeout=timeout,
            limits=limits,
            preload=("app.engine.readers", "app.services.inspection"),
        )

    @property
    def timeout(self) -> float:
        """Seconds one inspection (or plan) may take."""
        return self.pool.timeout

    async def start(self) -> None:
        """Start the children (the API's lifespan does, before the first request)."""
        await self.pool.start()

    async def close(self) -> None:
        """Kill the children."""
        await self.pool.close()

    @contextlib.contextmanager
    def _refusing(self) -> Iterator[None]:
        """A child that hung or died, or failed unexpectedly, refuses what it read."""
        try:
            yield
        except ChildTimeoutError as exc:
            raise TooLargeError(
                f"inspection took longer than {self.timeout:g} s and was stopped"
            ) from exc
        except ChildLostError as exc:
            raise UnreadableCheckpointError(
                "the inspection process died reading this file"
            ) from exc
        except GraftError as exc:
            if not isinstance(exc, InternalError):
                raise
            raise UnreadableCheckpointError(f"cannot read: {exc.message}") from exc

    async def inspect(
        self,
        files: list[Path],
        *,
        names: list[str] | None = None,
        entry: str = "auto",
        paged: bool = False,
    ) -> dict[str, Any]:
        """Describe a checkpoint (one file, or the files of a sharded set).

        Args:
            files: the staged files.
            names: the names they were uploaded with (default: their own), so a sharded
                set's index can name its shards whatever they are staged as.
            entry: which dict holds the weights (SPEC §1).
            paged: the tensors as stored pages (``tensor_pages``, ``tensor_count``), for a
                record; not as a list.

        Returns:
            The engine's ``inspect_source`` summary.

        Raises:
            GraftError: the engine refused the file, or the child died or hung.
        """
        payload = {
            "files": [str(p) for p in files],
            "names": names or [p.name for p in files],
            "entry": entry,
            "max_tensors": self.max_tensors,
            "paged": paged,
        }
        with self._refusing():
            answer = await self.pool.call(inspect_in_child, payload, budget=self.memory_budget)
        if not answer.get("ok"):
            raise GraftError.from_payload(answer, default=UnreadableCheckpointError.type)
        result: dict[str, Any] = answer["result"]
        return result

    async def architectures(
        self, *, extra: tuple[ArchitectureRef, ...] = ()
    ) -> list[dict[str, Any]]:
        """The engine's registered architectures (asked of a child: no torch import here).

        Args:
            extra: more architectures, (name, module, factory) triples (``GRAFT_ARCHITECTURES``).
        """
        with self._refusing():
            result: list[dict[str, Any]] = await self.pool.call(
                architectures_in_child, {"extra": extra}
            )
        return result

    async def check_architecture(
        self, name: str, kwargs: dict[str, Any], *, extra: tuple[ArchitectureRef, ...] = ()
    ) -> None:
        """Bind ``name`` with ``kwargs`` in a child, exactly as the worker will.

        Raises:
            GraftError: ``invalid-target``, naming the architecture and the kwarg.
        """
        with self._refusing():
            await self.pool.call(bind_in_child, {"name": name, "kwargs": kwargs, "extra": extra})

    async def plan(self, request: ConversionRequest) -> ConversionOutcome:
        """A dry run, from headers alone, in a child: what the conversion would produce.

        Args:
            request: the conversion, with ``dry_run`` set (the source and a checkpoint
                target's files staged where the child can read them).

        Returns:
            The outcome; its report is ``ok`` false when the recipe's policy would refuse.

        Raises:
            GraftError: an invalid target, an unreadable or unsafe file, or a plan that
                ran past the timeout.
        """
        with self._refusing():
            return await run_conversion_pooled(request, PathSink(None), pool=self.pool)

    async def align(
        self,
        request: ConversionRequest,
        *,
        min_confidence: float | None = None,
    ) -> dict[str, Any]:
        """Align the source's headers to the target's in a child (SPEC §2.2).

        Args:
            request: the source, target and recipe (files staged where the child can read
                them); its options are not used.
            min_confidence: overrides the recipe's ``align_min_confidence``.

        Returns:
            ``{recipe, matches, unresolved, rules}``.

        Raises:
            GraftError: an invalid target or recipe, an unreadable or unsafe file, or an
                alignment that ran past the timeout.
        """
        payload = {
            "source": [str(p) for p in request.source],
            "target": request.target.model_dump(mode="json"),
            "target_files": [str(p) for p in request.target_files],
            "recipe": request.recipe.model_dump(mode="json"),
            "min_confidence": min_confidence,
            "extra": request.architectures,
        }
        with self._refusing():
            # Like a plan, no inspection budget: an architecture target builds its model.
            result: dict[str, Any] = await self.pool.call(align_in_child, payload)
        return result
