"""Where tensor work runs: ``GRAFT_DEVICE=auto|cpu|cuda|cuda:N`` resolved to one device."""

from __future__ import annotations

import functools
import re

from app.engine.errors import DeviceUnavailableError

__all__ = ["Device", "check_device", "resolve_device"]

_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]+)?")


@functools.cache
def resolve_device(device: str, *, index: int = 0) -> str:
    """The device one worker uses: ``cpu`` or ``cuda:N``.

    ``auto`` is CUDA when torch sees a GPU, else the CPU. ``auto`` and ``cuda`` pin worker
    ``index`` to GPU ``index % device_count`` so several workers spread over several GPUs;
    ``cuda:N`` and ``cpu`` are taken as given. The engine resolves ``auto`` only when a
    tensor is actually materialised, so a byte-copy conversion never imports torch.

    Raises:
        DeviceUnavailableError: ``cuda`` was asked for and torch sees no GPU.
    """
    if device == "cpu" or device.startswith("cuda:"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        if device == "cuda":
            raise DeviceUnavailableError(_no_cuda(device))
        return "cpu"
    return f"cuda:{index % count}"


def check_device(device: str) -> None:
    """Refuse, before any work, a device name that is malformed or names a missing GPU.

    ``auto`` and ``cpu`` never import torch; ``cuda`` and ``cuda:N`` ask torch whether that GPU
    is there.

    Raises:
        DeviceUnavailableError: not ``auto``, ``cpu``, ``cuda`` or ``cuda:N``, or no such GPU.
    """
    if not _DEVICE.fullmatch(device):
        raise DeviceUnavailableError(
            f"device {device!r} is not auto, cpu, cuda or cuda:N (e.g. cuda:0)"
        )
    if device in ("auto", "cpu"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if index >= count:
        raise DeviceUnavailableError(_no_cuda(device, count))


def _no_cuda(device: str, count: int = 0) -> str:
    seen = f"{count} CUDA device(s)" if count else "no CUDA device"
    return f"device {device!r} was asked for, but torch sees {seen}; use --device cpu or auto"


class Device:
    """The device one conversion asked for, resolved on first use and then kept.

    The one place a conversion turns ``auto`` into a device: shape ops and model verification
    both read :attr:`name`, and a conversion that never materialises a tensor never resolves
    it, so it never imports torch.
    """

    def __init__(self, requested: str) -> None:
        self.requested = requested

    @functools.cached_property
    def name(self) -> str:
        """``cpu`` or ``cuda:N`` (see :func:`resolve_device`)."""
        return resolve_device(self.requested)
