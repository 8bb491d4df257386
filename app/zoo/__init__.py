"""Reference architectures written in this project: small, real, and registered as targets.

They register like any plug-in, through the ``graft.architectures`` entry points in
``pyproject.toml``; the engine never imports this package.

Each model declares a deterministic ``example_input(batch)`` and the shape its forward pass
returns for it (``example_output_shape(batch)``), so a conversion into it can be proven by
running it (see ``app.engine.verify``). Each reproduces its namesake's state-dict layout and
forward pass exactly (torchvision's ResNet and MobileNetV2, timm's ViT, transformers'
``BertModel``), so published checkpoints of those families load with no recipe.
"""

from __future__ import annotations

from app.zoo.bert import BertModel
from app.zoo.mobilenet import MobileNet
from app.zoo.resnet import ResNet
from app.zoo.vit import VisionTransformer

__all__ = ["BertModel", "MobileNet", "ResNet", "VisionTransformer"]
