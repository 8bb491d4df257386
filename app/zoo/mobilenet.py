"""torchvision's ``mobilenet_v2``: the same state-dict keys and the same forward pass.

Written in this project from the published architecture (Sandler et al., 2018, table 2: an
inverted-residual bottleneck per row, ReLU6, a linear projection), with torchvision's layout
(``features.N``, ``classifier.1``) and its rounding of channel counts to multiples of 8, so
torchvision's ImageNet checkpoint loads with no recipe and ``strict=True``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from app.engine.examples import example_image

__all__ = ["ConvBNReLU", "InvertedResidual", "MobileNet", "make_divisible"]

# (expansion t, output channels c, repeats n, first stride s), the paper's table 2.
_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def make_divisible(value: float, divisor: int = 8) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never down by more than 10%."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


class ConvBNReLU(nn.Sequential):
    """``0``: conv (no bias, "same" padding), ``1``: BatchNorm, ``2``: ReLU6."""

    def __init__(
        self, in_chans: int, out_chans: int, kernel: int = 3, stride: int = 1, groups: int = 1
    ) -> None:
        super().__init__(
            nn.Conv2d(in_chans, out_chans, kernel, stride, (kernel - 1) // 2, groups=groups,
                      bias=False),
            nn.BatchNorm2d(out_chans),
            nn.ReLU6(inplace=True),
        )  # fmt: skip


class InvertedResidual(nn.Module):
    """``conv``: [1x1 expand,] 3x3 depthwise, 1x1 linear projection + BN; residual if it fits."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = round(in_chans * expand)
        self.use_res_connect = stride == 1 and in_chans == out_chans
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU(in_chans, hidden, kernel=1))
        layers += [
            ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, out_chans, 1, bias=False),
            nn.BatchNorm2d(out_chans),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_res_connect else out


class MobileNet(nn.Module):
    """torchvision's ``mobilenet_v2``: ``features`` (stem, 17 blocks, 1x1 conv), ``classifier``.

    Args:
        num_classes: outputs of ``classifier.1``.
        in_chans: input image channels (torchvision's are 3; others are Graft's extension:
            only ``features.0.0`` changes).
        width_mult: scales every layer's channels (rounded to multiples of 8).
        img_size: side of the example input.
    """

    # Adapted by default when a checkpoint's shapes differ (``app.engine.adaptations``).
    adaptations: ClassVar[dict[str, Any]] = {
        "first_conv": "features.0.0",
        "classifier": "classifier.1",
    }

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        width_mult: float = 1.0,
        img_size: int = 224,
    ) -> None:
        super().__init__()
        if min(num_classes, in_chans) < 1 or not width_mult > 0 or img_size < 32:
            raise ValueError("num_classes, in_chans >= 1, width_mult > 0 and img_size >= 32")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        chans = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers: list[nn.Module] = [ConvBNReLU(in_chans, chans, stride=2)]
        for expand, c, repeats, stride in _SETTINGS:
            out = make_divisible(c * width_mult)
            for i in range(repeats):
                layers.append(InvertedResidual(chans, out, stride if i == 0 else 1, expand))
                chans = out
        layers.append(ConvBNReLU(chans, last, kernel=1))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        out: torch.Tensor = self.classifier(torch.flatten(x, 1))
        return out

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_image(batch, self.in_chans, self.img_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.num_classes)
