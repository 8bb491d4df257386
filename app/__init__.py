"""Graft: transplant pretrained PyTorch weights into a different architecture."""

__version__ = "0.1.0"
