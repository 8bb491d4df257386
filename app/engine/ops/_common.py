"""Helpers every shape op shares: the working dtype, the finished tensor, shapes and names."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.engine._lazy import LazyModule
from app.engine.errors import InvalidRecipeError

if TYPE_CHECKING:
    import torch
else:  # torch loads on first use: planning never needs it
    torch = LazyModule("torch")

__all__ = ["Shape", "as_shape", "dtype_name", "finish", "who", "work"]

Shape = tuple[int, ...]


def work(t: torch.Tensor, key: str | None, op: str) -> torch.Tensor:
    """``t`` in the dtype the op computes in: float32, or float64 to keep its precision."""
    if not t.is_floating_point():
        raise InvalidRecipeError(
            f"{who(key)}: {op} adapts floating tensors only, got {dtype_name(t.dtype)}"
        )
    return t if t.dtype == torch.float64 else t.to(torch.float32)


def finish(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Back to ``t``'s dtype, contiguous, and never sharing ``t``'s memory (crops are views)."""
    out = out.to(t.dtype).contiguous()
    if out.untyped_storage().data_ptr() == t.untyped_storage().data_ptr():
        out = out.clone()
    return out


def as_shape(shape: Sequence[int]) -> Shape:
    """A shape as a tuple of Python ints (``torch.Size`` and lists alike)."""
    return tuple(int(d) for d in shape)


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``float32``."""
    return str(dtype).removeprefix("torch.")


def who(key: str | None) -> str:
    """How messages name the tensor: its key, quoted, when known."""
    return repr(key) if key else "tensor"
