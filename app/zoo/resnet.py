"""torchvision's ResNet (18/34/50/101/152): the same state-dict keys and the same forward pass.

Written in this project from the published architecture (He et al., 2016, with the stride of a
bottleneck on its 3x3 conv, "ResNet v1.5", as torchvision does), so torchvision's ImageNet
checkpoints load with no recipe and ``strict=True`` and give the same outputs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from app.engine.examples import example_image

__all__ = ["DEPTHS", "BasicBlock", "Bottleneck", "ResNet"]

# depth -> (block, blocks per stage), as in the paper's table 1.
DEPTHS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def _downsample(in_chans: int, out_chans: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_chans == out_chans:
        return None
    return nn.Sequential(
        nn.Conv2d(in_chans, out_chans, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chans)
    )


class BasicBlock(nn.Module):
    """conv3x3-bn-relu-conv3x3-bn plus the (projected) identity, then relu."""

    expansion = 1

    def __init__(self, in_chans: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(in_chans, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """conv1x1-bn-relu, conv3x3 (strided)-bn-relu, conv1x1 (x4)-bn, plus the identity, relu."""

    expansion = 4

    def __init__(self, in_chans: int, planes: int, stride: int) -> None:
        super().__init__()
        out_chans = planes * self.expansion
        self.conv1 = nn.Conv2d(in_chans, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_chans, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_chans)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_chans, out_chans, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ``resnet{depth}``: stem, four stages, global average pool, ``fc``.

    Args:
        depth: 18, 34 (basic blocks), 50, 101 or 152 (bottlenecks).
        num_classes: outputs of the ``fc`` head.
        in_chans: input image channels (torchvision's are 3; more or fewer is Graft's
            extension: only ``conv1`` changes).
        img_size: side of the example input (the network itself takes any size >= 32).
    """

    # Adapted by default when a checkpoint's shapes differ (``app.engine.adaptations``).
    adaptations: ClassVar[dict[str, Any]] = {"first_conv": "conv1", "classifier": "fc"}

    def __init__(
        self, depth: int = 50, num_classes: int = 1000, in_chans: int = 3, img_size: int = 224
    ) -> None:
        super().__init__()
        if depth not in DEPTHS:
            raise ValueError(f"depth {depth} is not one of {', '.join(map(str, DEPTHS))}")
        if min(num_classes, in_chans) < 1 or img_size < 32:
            raise ValueError("num_classes and in_chans must be >= 1, img_size >= 32")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        kind, counts = DEPTHS[depth]
        block: type[BasicBlock | Bottleneck] = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        chans = 64
        for stage, count in enumerate(counts):
            planes = 64 * 2**stage
            blocks: list[nn.Module] = []
            for i in range(count):
                blocks.append(block(chans, planes, 2 if stage and i == 0 else 1))
                chans = planes * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(chans, num_classes)
        for module in self.modules():  # torchvision's init, so a fresh model is comparable
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in range(4):
            x = getattr(self, f"layer{stage + 1}")(x)
        return self.fc(torch.flatten(self.avgpool(x), 1))

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_image(batch, self.in_chans, self.img_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.num_classes)
