"""A tiny architecture the provenance tests register (as GRAFT_ARCHITECTURES would)."""

from __future__ import annotations

from torch import nn

__all__ = ["tiny_mlp"]


def tiny_mlp(width: int = 6) -> nn.Module:
    """Linear, ReLU, Linear: a square first weight, so a transposed one still loads."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))
