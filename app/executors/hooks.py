"""Stage hooks: code a process installs to run at each stage of every job it executes.

Production installs none. The test suite installs one that pauses at each stage (so a test
can kill a worker or cancel a job mid-flight); its worker processes load it from
``tests/plugins/sitecustomize.py``. This module imports nothing, so installing a hook at
interpreter start costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["StageHook", "install_stage_hook", "installed_stage_hooks"]

StageHook = Callable[[str, Callable[[], None]], None]
"""Called as ``hook(stage, tick)`` when a job enters ``stage``; it calls ``tick`` while it
waits, which raises when the job must stop (cancel, lost lease, worker stopping)."""

_installed: list[StageHook] = []


def install_stage_hook(hook: StageHook) -> None:
    """Run ``hook`` at each stage of the jobs of runtimes built after this call."""
    _installed.append(hook)


def installed_stage_hooks() -> tuple[StageHook, ...]:
    """The hooks installed in this process, in order."""
    return tuple(_installed)
