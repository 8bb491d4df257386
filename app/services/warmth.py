"""Which embedded workers are warm: a marker file per worker process, named by its pid.

A worker warms up (torch imported in its sandbox fork server, one child run through it)
before it claims its first job, then leaves ``warm-<pid>`` in the markers folder. The API's
``/readyz`` counts markers whose process is still alive, so a killed worker's marker does not
count; ``graft serve`` empties the folder when it starts.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["CONVERSION_PRELOAD", "clear_marks", "mark_warm", "markers_dir", "warm_workers"]

# What a conversion's fork server imports once (torch and the engine), so each job's child
# starts warm. Here, in a module light to import, so that a worker can start its fork server
# before it imports anything heavy itself (``app.worker``).
CONVERSION_PRELOAD = (
    "torch",
    "app.services.conversion",
    "app.engine.pipeline",
    "app.engine.target",
)


def markers_dir(storage_dir: Path) -> Path:
    """Where the markers live: beside the blob store's local files (local even with S3)."""
    return storage_dir / "workers"


def mark_warm(folder: Path, pid: int | None = None) -> Path:
    """Record that process ``pid`` (default: this one) is warm."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / f"warm-{pid or os.getpid()}"
    marker.write_text("warm\n")
    return marker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def warm_workers(folder: Path) -> int:
    """How many marked workers are still running."""
    if not folder.is_dir():
        return 0
    pids = [p.name.removeprefix("warm-") for p in folder.glob("warm-*")]
    return sum(1 for pid in pids if pid.isdigit() and _alive(int(pid)))


def clear_marks(folder: Path) -> None:
    """Forget every marker, and the gates of earlier starts (at start: the previous run's
    workers are gone)."""
    if folder.is_dir():
        for marker in [*folder.glob("warm-*"), *folder.glob("migrated-*")]:
            with contextlib.suppress(FileNotFoundError):
                marker.unlink()
