"""Deterministic example inputs: the same values on every device and every run.

Used by the verification of library architectures (torchvision, timm) and by the zoo; a
plug-in's `example_input` may use them too.
"""

from __future__ import annotations

import torch

__all__ = ["example_ids", "example_image"]

EXAMPLE_SEED = 0


def example_image(batch: int, chans: int, size: int) -> torch.Tensor:
    """``[batch, chans, size, size]`` drawn from N(0, 1) with a fixed seed, on the CPU."""
    gen = torch.Generator().manual_seed(EXAMPLE_SEED)
    return torch.randn(batch, chans, size, size, generator=gen, device="cpu")


def example_ids(batch: int, length: int, vocab_size: int) -> torch.Tensor:
    """``[batch, length]`` token ids in ``[0, vocab_size)`` with a fixed seed, on the CPU."""
    gen = torch.Generator().manual_seed(EXAMPLE_SEED)
    return torch.randint(0, vocab_size, (batch, length), generator=gen, device="cpu")
