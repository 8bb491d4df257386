"""Where tensor work runs: ``GRAFT_DEVICE=auto|cpu|cuda|cuda:N`` resolved to one device."""

from __future__ import annotations

import functools

__all__ = ["Device", "resolve_device"]


@functools.cache
def resolve_device(device: str, *, index: int = 0) -> str:
    """The device one worker uses: ``cpu`` or ``cuda:N``.

    ``auto`` is CUDA when torch sees a GPU, else the CPU. ``auto`` and ``cuda`` pin worker
    ``index`` to GPU ``index % device_count`` so several workers spread over several GPUs;
    ``cuda:N`` and ``cpu`` are taken as given. The engine resolves ``auto`` only when a
    tensor is actually materialised, so a byte-copy conversion never imports torch.

    Raises:
        RuntimeError: ``cuda`` was asked for and torch sees no GPU.
    """
    if device == "cpu" or device.startswith("cuda:"):
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        if device == "cuda":
            raise RuntimeError("GRAFT_DEVICE=cuda, but torch sees no CUDA device")
        return "cpu"
    return f"cuda:{index % count}"


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
