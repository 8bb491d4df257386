"""Tensor descriptions that need no tensor data: what planning and inspection work on."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "BUFFER_NAMES",
    "DTYPE_SIZES",
    "TensorInfo",
    "TensorKind",
    "guess_kind",
    "is_floating",
]

TensorKind = Literal["parameter", "buffer"]

# Canonical dtype names are torch's (``str(torch.float32)`` without the ``torch.`` prefix).
DTYPE_SIZES: dict[str, int] = {
    "float64": 8,
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "complex64": 8,
    "complex128": 16,
    "int64": 8,
    "int32": 4,
    "int16": 2,
    "int8": 1,
    "uint8": 1,
    "uint16": 2,
    "uint32": 4,
    "uint64": 8,
    "bool": 1,
}

_FLOATING = {"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"}

# Last key components that PyTorch modules register as buffers, not parameters.
BUFFER_NAMES = frozenset(
    {
        "running_mean",
        "running_var",
        "num_batches_tracked",
        "position_ids",
        "token_type_ids",
        "relative_position_index",
        "attn_mask",
        "attention_mask",
        "inv_freq",
        "anchors",
        "anchor_generator",
        "mask",
    }
)


def is_floating(dtype: str) -> bool:
    """Whether ``dtype`` (a canonical name) is a floating-point type."""
    return dtype in _FLOATING


def guess_kind(key: str, dtype: str) -> TensorKind:
    """Classify a source tensor as parameter or buffer from its name and dtype.

    Checkpoints do not record the distinction; these are the buffers PyTorch modules register
    (BatchNorm statistics, position ids, relative position indices), plus every non-floating
    tensor, since a parameter must be floating or complex.
    """
    if key.rsplit(".", 1)[-1] in BUFFER_NAMES:
        return "buffer"
    if not (is_floating(dtype) or dtype.startswith("complex")):
        return "buffer"
    return "parameter"


@dataclass(frozen=True, slots=True)
class TensorInfo:
    """One tensor as a header describes it.

    Attributes:
        key: the key as seen after prefix stripping.
        shape: the tensor's shape.
        dtype: canonical dtype name (``float32``, ``bfloat16``, ``int64`` …).
        kind: ``parameter`` or ``buffer`` (exact for skeletons, guessed for checkpoints).
        module: the owning module's type (``Conv2d``) when the target knows it.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    kind: TensorKind = "parameter"
    module: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_SIZES.get(self.dtype, 0)
