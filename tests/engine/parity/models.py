"""Models for the parity tests: a Meta-layout LLaMA written from Meta's reference code
(interleaved rotary, ``wq/wk/wv/wo``, ``w1/w2/w3``), with switches for the layouts the seeded
failures need (fused qkv, an RMSNorm ``1 + w`` offset, a tied head); transformers' own
``LlamaModel`` and ``BertModel`` built from kwargs; and MobileNetV2 in a renamed layout."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from app.zoo.mobilenet import MobileNet

LLAMA = {"vocab_size": 64, "hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2,
         "intermediate_size": 48}  # fmt: skip
HEADS, DIM = LLAMA["num_attention_heads"], LLAMA["hidden_size"]
HEAD_DIM = DIM // HEADS
EPS = 1e-5


def hf_llama(**kwargs: Any) -> nn.Module:
    """transformers' ``LlamaModel`` (eager attention), configured by ``LlamaConfig`` names."""
    import transformers

    config = transformers.LlamaConfig(
        **{**LLAMA, **kwargs}, rms_norm_eps=EPS, max_position_embeddings=64,
        attn_implementation="eager",
    )  # fmt: skip
    return transformers.LlamaModel(config)


def hf_bert(**kwargs: Any) -> nn.Module:
    """transformers' ``BertModel`` configured by ``BertConfig`` names."""
    import transformers

    return transformers.BertModel(transformers.BertConfig(**kwargs))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, offset: bool) -> None:
        super().__init__()
        self.offset = offset  # Gemma-style: the stored weight is the scale minus one
        self.weight = nn.Parameter(torch.zeros(dim) if offset else torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
        return normed * (1 + self.weight if self.offset else self.weight)


def _rotary(x: torch.Tensor) -> torch.Tensor:
    """Meta's ``apply_rotary_emb``: consecutive pairs of features are one complex number."""
    seq = x.shape[1]
    freqs = 1.0 / (10000.0 ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
    angles = torch.outer(torch.arange(seq).float(), freqs)
    cis = torch.polar(torch.ones_like(angles), angles)[None, :, None, :]
    pairs = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * cis).flatten(3).type_as(x)


class Attention(nn.Module):
    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        if fused:
            self.wqkv = nn.Linear(DIM, 3 * DIM, bias=False)
        else:
            self.wq = nn.Linear(DIM, DIM, bias=False)
            self.wk = nn.Linear(DIM, DIM, bias=False)
            self.wv = nn.Linear(DIM, DIM, bias=False)
        self.wo = nn.Linear(DIM, DIM, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        if self.fused:
            q, k, v = self.wqkv(x).chunk(3, dim=-1)
        else:
            q, k, v = self.wq(x), self.wk(x), self.wv(x)
        q, k = _rotary(q.view(b, s, HEADS, HEAD_DIM)), _rotary(k.view(b, s, HEADS, HEAD_DIM))
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = v.view(b, s, HEADS, HEAD_DIM).transpose(1, 2)
        scores = q @ k.transpose(2, 3) / math.sqrt(HEAD_DIM)
        scores = scores + torch.full((s, s), float("-inf")).triu(1)
        out = torch.softmax(scores.float(), dim=-1).type_as(q) @ v
        return self.wo(out.transpose(1, 2).reshape(b, s, DIM))


class FeedForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        hidden = LLAMA["intermediate_size"]
        self.w1 = nn.Linear(DIM, hidden, bias=False)
        self.w2 = nn.Linear(hidden, DIM, bias=False)
        self.w3 = nn.Linear(DIM, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(nn.functional.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, fused: bool, offset: bool) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(DIM, offset)
        self.attention = Attention(fused)
        self.ffn_norm = RMSNorm(DIM, offset)
        self.feed_forward = FeedForward()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class MetaLlama(nn.Module):
    """Meta's ``Transformer`` layout; ``head`` adds ``output``, ``tie`` shares its tensor with
    ``tok_embeddings`` (checkpoints then store it once)."""

    def __init__(self, fused_qkv: bool = False, norm_offset: bool = False, head: bool = False,
                 tie: bool = False) -> None:  # fmt: skip
        super().__init__()
        self.tok_embeddings = nn.Embedding(LLAMA["vocab_size"], DIM)
        self.layers = nn.ModuleList(
            Block(fused_qkv, norm_offset) for _ in range(LLAMA["num_hidden_layers"])
        )
        self.norm = RMSNorm(DIM, norm_offset)
        self.output = nn.Linear(DIM, LLAMA["vocab_size"], bias=False) if head else None
        if self.output is not None and tie:
            self.output.weight = self.tok_embeddings.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        h = self.norm(h)
        return self.output(h) if self.output is not None else h


def meta_from_hf(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ``LlamaModel`` state dict in Meta's layout (q/k rows interleaved): the
    inverse of transformers' ``convert_llama_weights_to_hf`` permutation."""

    def unpermute(w: torch.Tensor) -> torch.Tensor:
        return w.view(HEADS, 2, HEAD_DIM // 2, DIM).transpose(1, 2).reshape(DIM, DIM)

    names = {"self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk",
             "self_attn.v_proj": "attention.wv", "self_attn.o_proj": "attention.wo",
             "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
             "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm",
             "post_attention_layernorm": "ffn_norm"}  # fmt: skip
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        new = key.replace("embed_tokens.", "tok_embeddings.")
        for hf_name, meta_name in names.items():
            new = new.replace(f".{hf_name}.", f".{meta_name}.")
        if key.endswith(("q_proj.weight", "k_proj.weight")):
            value = unpermute(value)
        out[new] = value.contiguous()
    return out


class RenamedMobileNet(nn.Module):
    """graft_mobilenet's network under other names: ``body.N`` and ``fc``."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        base = MobileNet(num_classes=num_classes)
        self.body = base.features
        self.fc = base.classifier[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.body(x), (1, 1))
        out: torch.Tensor = self.fc(torch.flatten(x, 1))
        return out
