"""A ResNet-style CNN with BatchNorm, named like torchvision's ``resnet18``."""

from __future__ import annotations

import torch
from torch import nn

from app.engine.examples import example_image

__all__ = ["BasicBlock", "ResNet"]


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn plus the (projected) identity, then relu."""

    def __init__(self, in_chans: int, out_chans: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, out_chans, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_chans)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_chans),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Stem (conv 7x7/2, BN, max-pool), four stages of basic blocks, global pool, ``fc``.

    Args:
        num_classes: outputs of the ``fc`` head.
        in_chans: input image channels.
        img_size: side of the example input (the network itself takes any size >= 32).
        depth: basic blocks per stage (torchvision's resnet18 has 2).
        width: channels after the stem; the stages have 1, 2, 4 and 8 times as many.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        depth: int = 2,
        width: int = 64,
    ) -> None:
        super().__init__()
        if min(num_classes, in_chans, depth, width) < 1 or img_size < 32:
            raise ValueError("num_classes, in_chans, depth and width must be >= 1, img_size >= 32")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.conv1 = nn.Conv2d(in_chans, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        chans = width
        for stage in range(4):
            out = width * 2**stage
            blocks = [BasicBlock(chans, out, 2 if stage else 1)]
            blocks += [BasicBlock(out, out, 1) for _ in range(depth - 1)]
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
            chans = out
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_image(batch, self.in_chans, self.img_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.num_classes)
