"""timm's ``VisionTransformer`` (``vit_*``): the same state-dict keys and the same forward pass.

Written in this project from the published architecture (Dosovitskiy et al., 2021) as timm lays
it out: ``patch_embed.proj``, ``cls_token``, ``pos_embed`` (class token included),
``blocks.N.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}``, ``norm``, ``head``;
pre-norm blocks, LayerNorm eps 1e-6, exact GELU, the class token read by the head.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.examples import example_image

__all__ = ["Attention", "Block", "Mlp", "PatchEmbed", "VisionTransformer"]


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (bias on, as timm's default)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        out_: torch.Tensor = self.proj(out.transpose(1, 2).reshape(b, n, c))
        return out_


class Mlp(nn.Module):
    """``fc2(gelu(fc1(x)))``."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc2(self.act(self.fc1(x)))
        return out


class Block(nn.Module):
    """Pre-norm block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.mlp(self.norm2(x))
        return out


class PatchEmbed(nn.Module):
    """Non-overlapping ``patch_size`` patches, each projected to ``dim`` channels (``proj``)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, dim: int) -> None:
        super().__init__()
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x).flatten(2).transpose(1, 2)
        return out


class VisionTransformer(nn.Module):
    """timm's ViT with a class token: patch embedding, position embedding, blocks, norm, ``head``.

    Args:
        img_size: input side; a multiple of ``patch_size``. It sets ``pos_embed``'s length
            (adapt a checkpoint of another size with ``op: interpolate``).
        patch_size: side of the square patches (another size: ``op: kernel_resize``).
        embed_dim: token width; a multiple of ``num_heads``.
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: the MLP's hidden width over ``embed_dim``.
        num_classes: outputs of ``head``; 0 gives no head (the pooled features), as in timm.
        in_chans: input image channels.
    """

    # Adapted by default when a checkpoint's shapes differ (``app.engine.adaptations``):
    # another ``img_size`` interpolates ``pos_embed`` around its class token.
    adaptations: ClassVar[dict[str, Any]] = {
        "first_conv": "patch_embed.proj", "classifier": "head", "pos_embed": "pos_embed",
        "num_prefix_tokens": 1,
    }  # fmt: skip

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if min(img_size, patch_size, embed_dim, depth, num_heads, in_chans) < 1:
            raise ValueError("img_size, patch_size, embed_dim, depth, num_heads, in_chans >= 1")
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not a multiple of num_heads {num_heads}")
        if num_classes < 0 or not mlp_ratio > 0:
            raise ValueError("num_classes must be >= 0 and mlp_ratio > 0")
        self.num_classes, self.in_chans, self.img_size = num_classes, in_chans, img_size
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.patch_embed.num_patches, embed_dim))
        # timm's draws: std .02, cut at ±2 std (not timm's absolute ±2, Graft's one convention).
        nn.init.trunc_normal_(self.pos_embed, std=0.02, a=-0.04, b=0.04)
        nn.init.normal_(self.cls_token, std=1e-6)
        self.blocks = nn.Sequential(*(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.head: nn.Module = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        out: torch.Tensor = self.head(x[:, 0])
        return out

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_image(batch, self.in_chans, self.img_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.num_classes or self.embed_dim)
