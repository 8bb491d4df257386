"""How a conversion writes its output: one frozen value instead of a bundle of keywords."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["OutputFormat", "WriteOptions"]

OutputFormat = Literal["safetensors", "torch"]


@dataclass(frozen=True, kw_only=True)
class WriteOptions:
    """Options of the write and verify stages.

    Attributes:
        format: ``safetensors`` (default, streamed) or ``torch``.
        dtype: cast every written tensor to this dtype; ``None`` keeps the recipe's ``dtype``.
        device: where shape ops and model verification run: ``auto`` (CUDA when present),
            ``cpu``, ``cuda``, ``cuda:N``. Resolved once, lazily, by the process doing the work,
            so a byte-copy conversion never imports torch. The output is written from the CPU.
        max_shard_size: write Hugging Face shards of at most this many bytes into a folder.
        verify: re-read the output and compare every fed tensor with its source; for an
            architecture target, also load it into the model and run a forward pass.
        byte_copy: copy unchanged tensors file to file without torch (``False`` forces the
            torch path; both write byte-identical files).
    """

    format: OutputFormat = "safetensors"
    dtype: str | None = None
    device: str = "cpu"
    max_shard_size: int | None = None
    verify: bool = True
    byte_copy: bool = True
