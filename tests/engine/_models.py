"""Tiny real models and helpers for the conversion tests (plan, convert, report, CLI).

Importable from a fresh interpreter (``from tests.engine._models import SmallNet``) so the
CLI tests can load a converted file into a newly built model in another process.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from app.engine.options import WriteOptions
from app.engine.pipeline import ConversionResult, convert
from app.engine.recipe import load_recipe
from app.engine.target import Target, skeleton_from_module

__all__ = [
    "Block",
    "SmallNet",
    "ViTStub",
    "assert_same",
    "entry",
    "file_sha256",
    "run",
    "save_sd",
    "save_st",
    "skeleton_of",
    "small_state_dict",
    "template_of",
    "unused_of",
]


class Block(nn.Module):
    """conv-bn-conv-bn: enough structure for grouped keys (``layer1.{0..1}.conv{1,2}``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)


class SmallNet(nn.Module):
    """A ResNet in miniature: stem conv + BN, two blocks, a classifier."""

    def __init__(self, in_chans: int = 3, classes: int = 10, width: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.layer1 = nn.Sequential(Block(width), Block(width))
        self.fc = nn.Linear(width, classes)


class ViTStub(nn.Module):
    """Just the parts of a ViT whose shapes depend on the image size."""

    def __init__(self, grid: int = 14, dim: int = 8) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.head = nn.Linear(dim, 10)


def small_state_dict(seed: int = 0, **kwargs: Any) -> dict[str, torch.Tensor]:
    """A SmallNet state dict with every value off its default (BN stats, affine, counters)."""
    torch.manual_seed(seed)
    model = SmallNet(**kwargs)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            m(torch.randn(2, m.num_features, 3, 3))
            m(torch.randn(2, m.num_features, 3, 3))  # num_batches_tracked == 2
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_sd(sd: Mapping[str, Any], path: Path, **kwargs: Any) -> Path:
    """``torch.save`` to ``path`` (pass ``_use_new_zipfile_serialization=False`` for legacy)."""
    torch.save(dict(sd), path, **kwargs)
    return path


def save_st(sd: Mapping[str, torch.Tensor], path: Path) -> Path:
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def template_of(sd: Mapping[str, torch.Tensor], path: Path) -> Target:
    """A template target: ``sd`` saved as a safetensors file, values usable as fallback."""
    return Target.from_checkpoint(save_st(sd, path))


def skeleton_of(model: nn.Module) -> Target:
    return Target.from_skeleton(skeleton_from_module(model))


def run(
    source: Path,
    target: Target,
    recipe: Mapping[str, Any] | None = None,
    output: Path | None = None,
    **kwargs: Any,
) -> tuple[ConversionResult, dict[str, torch.Tensor] | None]:
    """Convert (closing ``target``) and read a written safetensors output back."""
    with target:
        result = convert(source, target, load_recipe(dict(recipe or {})), output=output, **kwargs)
    written = None
    if result.output is not None and kwargs.get("options", WriteOptions()).format == "safetensors":
        written = load_file(str(result.output))
    return result, written


def entry(report: dict[str, Any], target: str) -> dict[str, Any]:
    """The report entry for one target key."""
    found = [e for e in report["entries"] if e["target"] == target]
    assert len(found) == 1, target
    return found[0]


def unused_of(report: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    """source key -> (reason, rule) for every unused source key."""
    return {u["source"]: (u["reason"], u["rule"]) for u in report["unused"]}


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_same(actual: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> None:
    """Every key of ``expected`` is in ``actual`` with the same dtype, shape and values."""
    for key, value in expected.items():
        assert key in actual, key
        assert actual[key].dtype == value.dtype, key
        assert torch.equal(actual[key], value), key
