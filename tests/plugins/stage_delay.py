"""A stage hook that pauses each job at each stage, so a test can act mid-job (kill -9 a
worker, cancel, restart the server) while the job stays abortable."""

from __future__ import annotations

import time
from collections.abc import Callable

from app.executors.hooks import StageHook

__all__ = ["pause_at_stages"]


def pause_at_stages(seconds: float) -> StageHook:
    """A hook that waits ``seconds`` at each stage, calling ``tick`` every 50 ms."""

    def pause(stage: str, tick: Callable[[], None]) -> None:
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            tick()
            time.sleep(min(0.05, remaining))

    return pause
