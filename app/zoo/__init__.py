"""Reference architectures written in this project: small, real, and registered as targets.

They register like any plug-in, through the ``graft.architectures`` entry points in
``pyproject.toml``; the engine never imports this package.

Each model declares a deterministic ``example_input(batch)`` and the shape its forward pass
returns for it (``example_output_shape(batch)``), so a conversion into it can be proven by
running it (see ``app.engine.verify``). Module names follow the libraries they imitate
(torchvision's ResNet, timm's MobileNet and ViT, Hugging Face's BERT), so real checkpoints of
those families map onto them with few or no renames.
"""

from __future__ import annotations

from app.zoo.bert import BertEncoder
from app.zoo.mobilenet import MobileNet
from app.zoo.resnet import ResNet
from app.zoo.vit import VisionTransformer

__all__ = ["BertEncoder", "MobileNet", "ResNet", "VisionTransformer"]
