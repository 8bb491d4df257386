"""Reference architectures written in this project: small, real, and registered as targets.

Each model declares a deterministic ``example_input(batch)`` and the shape its forward pass
returns for it (``example_output_shape(batch)``), so a conversion into it can be proven by
running it (see ``app.engine.verify_model``). Module names follow the libraries they imitate
(torchvision's ResNet, timm's MobileNet and ViT, Hugging Face's BERT), so real checkpoints of
those families map onto them with few or no renames.
"""

from __future__ import annotations

from app.models.bert import BertEncoder
from app.models.mobilenet import MobileNet
from app.models.resnet import ResNet
from app.models.vit import VisionTransformer

__all__ = ["BUILTIN_ARCHITECTURES", "BertEncoder", "MobileNet", "ResNet", "VisionTransformer"]

# name -> factory: what ``app.engine.architectures`` registers as the built-ins.
BUILTIN_ARCHITECTURES = {
    "graft_resnet": ResNet,
    "graft_mobilenet": MobileNet,
    "graft_vit": VisionTransformer,
    "graft_bert": BertEncoder,
}
