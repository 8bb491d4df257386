"""A MobileNet-style CNN (inverted residuals, depthwise convs), named like timm's MobileNetV2."""

from __future__ import annotations

import torch
from torch import nn

from app.engine.examples import example_image

__all__ = ["InvertedResidual", "MobileNet"]


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 project (linear), residual when shapes allow."""

    def __init__(self, in_chans: int, out_chans: int, stride: int, expand: int = 4) -> None:
        super().__init__()
        mid = in_chans * expand
        self.conv_pw = nn.Conv2d(in_chans, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv_pwl = nn.Conv2d(mid, out_chans, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU6(inplace=True)
        self.has_skip = stride == 1 and in_chans == out_chans

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv_pw(x)))
        out = self.act(self.bn2(self.conv_dw(out)))
        out = self.bn3(self.conv_pwl(out))
        return out + x if self.has_skip else out


class MobileNet(nn.Module):
    """Stem conv 3x3/2 + BN, ``depth`` inverted-residual blocks, 1x1 head conv, ``classifier``.

    Args:
        num_classes: outputs of the ``classifier``.
        in_chans: input image channels.
        img_size: side of the example input.
        depth: inverted-residual blocks; every other one halves the resolution (at most 4 times).
        width: channels after the stem; each downsampling block doubles them.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        depth: int = 6,
        width: int = 32,
    ) -> None:
        super().__init__()
        if min(num_classes, in_chans, depth, width) < 1 or img_size < 32:
            raise ValueError("num_classes, in_chans, depth and width must be >= 1, img_size >= 32")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.conv_stem = nn.Conv2d(in_chans, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act = nn.ReLU6(inplace=True)
        blocks: list[nn.Module] = []
        chans = width
        for i in range(depth):
            down = i % 2 == 0 and i // 2 < 4
            out = chans * 2 if down else chans
            blocks.append(InvertedResidual(chans, out, 2 if down else 1))
            chans = out
        self.blocks = nn.Sequential(*blocks)
        self.num_features = chans * 4
        self.conv_head = nn.Conv2d(chans, self.num_features, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.num_features)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act(self.bn1(self.conv_stem(x))))
        x = self.act(self.bn2(self.conv_head(x)))
        return self.classifier(torch.flatten(self.global_pool(x), 1))

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_image(batch, self.in_chans, self.img_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.num_classes)
