"""Functional references for the zoo, written from the published architectures.

Each is a plain function of a state dict and an input (``F.conv2d``, ``F.linear``, no
``nn.Module``), independent of ``app.zoo``: the zoo's modules must give the same outputs on the
same weights. torchvision and timm cannot be imported beside the pinned torch, so these stand
in for them; real checkpoints check the layouts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

State = Mapping[str, torch.Tensor]

__all__ = ["mobilenet_v2", "resnet", "vit"]


def _bn(x: torch.Tensor, sd: State, name: str) -> torch.Tensor:
    return F.batch_norm(
        x, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
        sd[f"{name}.bias"], training=False, eps=1e-5,
    )  # fmt: skip


def resnet(sd: State, x: torch.Tensor, blocks: tuple[int, ...], bottleneck: bool) -> torch.Tensor:
    """He et al. 2016 (v1.5: a bottleneck strides on its 3x3), torchvision's key names."""
    x = F.relu(_bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), sd, "bn1"))
    x = F.max_pool2d(x, 3, stride=2, padding=1)
    for stage, count in enumerate(blocks):
        for i in range(count):
            p = f"layer{stage + 1}.{i}"
            stride = 2 if stage and i == 0 else 1
            if bottleneck:
                out = F.relu(_bn(F.conv2d(x, sd[f"{p}.conv1.weight"]), sd, f"{p}.bn1"))
                out = F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1)
                out = F.relu(_bn(out, sd, f"{p}.bn2"))
                out = _bn(F.conv2d(out, sd[f"{p}.conv3.weight"]), sd, f"{p}.bn3")
            else:
                out = F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
                out = F.relu(_bn(out, sd, f"{p}.bn1"))
                out = _bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd,
                        f"{p}.downsample.1")  # fmt: skip
            x = F.relu(out + x)
    return F.linear(x.mean(dim=(2, 3)), sd["fc.weight"], sd["fc.bias"])


def mobilenet_v2(sd: State, x: torch.Tensor) -> torch.Tensor:
    """Sandler et al. 2018, walking torchvision's keys: ``features.N`` then ``classifier.1``."""

    def conv_bn_relu6(x: torch.Tensor, name: str, stride: int = 1) -> torch.Tensor:
        w = sd[f"{name}.0.weight"]
        groups = x.shape[1] if w.shape[1] == 1 and x.shape[1] > 1 else 1
        x = F.conv2d(x, w, stride=stride, padding=w.shape[-1] // 2, groups=groups)
        return F.relu6(_bn(x, sd, f"{name}.1"))

    x = conv_bn_relu6(x, "features.0", stride=2)
    strides = {2: 2, 4: 2, 7: 2, 14: 2}  # the first block of each strided row of table 2
    n = 1
    while f"features.{n}.conv.0.0.weight" in sd:
        p = f"features.{n}.conv"
        expanded = f"{p}.3.weight" in sd
        out = conv_bn_relu6(x, f"{p}.0") if expanded else x
        dw = f"{p}.1" if expanded else f"{p}.0"
        out = conv_bn_relu6(out, dw, stride=strides.get(n, 1))
        last = 2 if expanded else 1
        out = _bn(F.conv2d(out, sd[f"{p}.{last}.weight"]), sd, f"{p}.{last + 1}")
        x = x + out if out.shape == x.shape else out
        n += 1
    x = conv_bn_relu6(x, f"features.{n}")
    return F.linear(x.mean(dim=(2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


def vit(sd: State, x: torch.Tensor, heads: int) -> torch.Tensor:
    """Dosovitskiy et al. 2021 as timm lays it out: pre-norm blocks, class token to the head."""
    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(x, w, sd["patch_embed.proj.bias"], stride=w.shape[-1]).flatten(2).transpose(1, 2)
    b, _, c = x.shape
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], dim=1) + sd["pos_embed"]

    def ln(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.layer_norm(t, (c,), sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)

    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        p = f"blocks.{i}"
        qkv = F.linear(ln(x, f"{p}.norm1"), sd[f"{p}.attn.qkv.weight"], sd[f"{p}.attn.qkv.bias"])
        q, k, v = qkv.split(c, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(b, -1, heads, c // heads).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-2, -1) / math.sqrt(c // heads)
        attn = (scores.softmax(dim=-1) @ split(v)).transpose(1, 2).reshape(b, -1, c)
        x = x + F.linear(attn, sd[f"{p}.attn.proj.weight"], sd[f"{p}.attn.proj.bias"])
        h = F.gelu(
            F.linear(ln(x, f"{p}.norm2"), sd[f"{p}.mlp.fc1.weight"], sd[f"{p}.mlp.fc1.bias"])
        )
        x = x + F.linear(h, sd[f"{p}.mlp.fc2.weight"], sd[f"{p}.mlp.fc2.bias"])
        i += 1
    return F.linear(ln(x, "norm")[:, 0], sd["head.weight"], sd["head.bias"])
