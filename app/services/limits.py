"""The sandbox limits each kind of child gets, from the service's settings."""

from __future__ import annotations

import math

from app.config import Settings
from app.sandbox.runner import Limits

__all__ = ["conversion_limits", "inspection_limits", "inspection_memory_budget"]


def inspection_limits(settings: Settings) -> Limits:
    """Inspection reads headers and writes nothing: CPU bounded by its timeout."""
    return Limits(
        address_space=settings.sandbox_address_space_bytes,
        cpu_seconds=math.ceil(settings.inspect_timeout_seconds),
        file_size=1024 * 1024,
        open_files=settings.sandbox_open_files,
        nice=settings.worker_nice,
    )


def conversion_limits(settings: Settings) -> Limits:
    """A job's conversion child: address space, CPU, output size and descriptors."""
    return Limits(
        address_space=settings.sandbox_address_space_bytes,
        cpu_seconds=settings.sandbox_cpu_seconds,
        file_size=settings.sandbox_file_bytes,
        open_files=settings.sandbox_open_files,
        nice=settings.worker_nice,
    )


def inspection_memory_budget(settings: Settings) -> int:
    """Address space one inspection may add to its child: headers only, never tensor data."""
    return settings.sandbox_inspect_memory_bytes
