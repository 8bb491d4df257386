"""The progress bar ``graft convert``, ``plan`` and ``submit`` draw on a terminal."""

from __future__ import annotations

import sys
from typing import Any

from app.engine.progress import ProgressEvent

__all__ = ["TerminalProgress"]


class TerminalProgress:
    """A rich progress bar on a terminal; nothing when stderr is piped."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._task: Any = None
        if sys.stderr.isatty():
            from rich.progress import Progress

            self._bar = Progress(transient=True)

    def __enter__(self) -> TerminalProgress:
        if self._bar is not None:
            self._bar.__enter__()
            self._task = self._bar.add_task("plan", total=1.0)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def __call__(self, event: ProgressEvent) -> None:
        self.show(event.stage, event.fraction)

    def show(self, stage: str, fraction: float) -> None:
        """Show ``stage`` at ``fraction`` (the client reports a remote job's progress so)."""
        if self._bar is not None:
            self._bar.update(self._task, description=stage, completed=fraction)
