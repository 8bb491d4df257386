"""The zoo reproduces its namesakes: layouts (parameter counts and keys) and forward passes
against the functional references in ``tests.zoo.references``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from app.zoo.mobilenet import MobileNet
from app.zoo.resnet import DEPTHS, ResNet
from app.zoo.vit import VisionTransformer
from tests.zoo import references

# torchvision's and timm's published parameter counts (their model cards / summaries).
PARAMETERS = {
    ("resnet", 18): 11_689_512,
    ("resnet", 34): 21_797_672,
    ("resnet", 50): 25_557_032,
    ("resnet", 101): 44_549_160,
    ("resnet", 152): 60_192_808,
    ("mobilenet_v2", 1.0): 3_504_872,
    ("vit_base_patch16_224", 0): 86_567_656,
}


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine, so a wrong BN wiring shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) + 0.5)
                module.bias.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


@pytest.mark.parametrize("depth", sorted(DEPTHS))
def test_resnet_has_torchvision_s_parameter_count(depth: int) -> None:
    with torch.device("meta"):
        assert _count(ResNet(depth=depth)) == PARAMETERS[("resnet", depth)]


def test_mobilenet_and_vit_have_their_namesakes_parameter_counts() -> None:
    with torch.device("meta"):
        assert _count(MobileNet()) == PARAMETERS[("mobilenet_v2", 1.0)]
        assert _count(VisionTransformer()) == PARAMETERS[("vit_base_patch16_224", 0)]


@pytest.mark.parametrize(("depth", "bottleneck"), [(18, False), (50, True)])
def test_resnet_forward_equals_the_reference(depth: int, bottleneck: bool) -> None:
    torch.manual_seed(depth)
    model = _randomize_bn(ResNet(depth=depth, num_classes=7, img_size=64), depth)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = references.resnet(model.state_dict(), x, DEPTHS[depth][1], bottleneck)
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_mobilenet_forward_equals_the_reference() -> None:
    torch.manual_seed(0)
    model = _randomize_bn(MobileNet(num_classes=5, in_chans=4, img_size=64), 0)
    x = torch.randn(2, 4, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), references.mobilenet_v2(model.state_dict(), x), rtol=1e-5, atol=1e-5
        )


def test_vit_forward_equals_the_reference() -> None:
    torch.manual_seed(0)
    model = VisionTransformer(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3,
                              num_classes=6).eval()  # fmt: skip
    with torch.no_grad():  # timm initialises these to ~0; make them count
        model.cls_token.normal_()
        model.pos_embed.normal_()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), references.vit(model.state_dict(), x, heads=3), rtol=1e-5, atol=1e-5
        )


def test_vit_without_head_returns_the_class_token_features() -> None:
    model = VisionTransformer(img_size=32, patch_size=16, embed_dim=16, depth=1, num_heads=2,
                              num_classes=0)  # fmt: skip
    assert not any(k.startswith("head.") for k in model.state_dict())
    assert model(model.example_input(2)).shape == model.example_output_shape(2) == (2, 16)


@pytest.mark.parametrize("positions", [1, 2, 8, 16, 512])
def test_graft_bert_builds_and_checks_every_position_table(positions: int) -> None:
    from app.engine.architectures import bind_architecture
    from app.zoo.bert import EXAMPLE_LENGTH

    config = {"vocab_size": 50, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "intermediate_size": 16,
              "max_position_embeddings": positions}  # fmt: skip
    bound = bind_architecture("graft_bert", config)
    model = bound.build("cpu").eval()
    example = bound.example(model, 2)
    assert example is not None
    ids, shape = example
    length = min(EXAMPLE_LENGTH, positions)
    assert (list(ids.shape), shape) == ([2, length], (2, length, 8))
    with torch.no_grad():
        assert tuple(model(ids).shape) == shape
