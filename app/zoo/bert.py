"""A BERT-style encoder with a classification head, named like Hugging Face's ``BertModel``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.examples import example_ids

__all__ = ["BertEncoder", "BertLayer"]


class BertSelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x))
        )
        return out.transpose(1, 2).reshape(b, n, c)


class BertOutput(nn.Module):
    """``LayerNorm(dense(x) + residual)``: post-norm, as BERT does."""

    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.self = BertSelfAttention(dim, num_heads)
        self.output = BertOutput(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(x), x)


class BertIntermediate(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.attention = BertAttention(dim, num_heads)
        self.intermediate = BertIntermediate(dim, dim * 4)
        self.output = BertOutput(dim * 4, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.attention(x)
        return self.output(self.intermediate(x), x)


class BertEmbeddings(nn.Module):
    position_ids: torch.Tensor

    def __init__(self, vocab_size: int, max_len: int, type_vocab_size: int, dim: int) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, dim)
        self.position_embeddings = nn.Embedding(max_len, dim)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, dim)
        self.LayerNorm = nn.LayerNorm(dim, eps=1e-12)
        # Not in the state dict (as in transformers): rebuilt by the constructor on any device.
        self.register_buffer("position_ids", torch.arange(max_len).unsqueeze(0), persistent=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        types = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(x + self.token_type_embeddings(types))


class BertEncoderStack(nn.Module):
    def __init__(self, dim: int, num_heads: int, depth: int) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(dim, num_heads) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


class BertPooler(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dense = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(x[:, 0]))


class BertEncoder(nn.Module):
    """Embeddings, ``depth`` post-norm layers, a tanh pooler on [CLS], a ``classifier``.

    Args:
        num_classes: outputs of the ``classifier``.
        vocab_size: rows of the word embedding.
        depth: encoder layers.
        width: hidden size; a multiple of ``num_heads``.
        num_heads: attention heads; by default one per 64 channels.
        max_len: rows of the position embedding (longest input).
        seq_len: length of the example input (at most ``max_len``).
    """

    def __init__(
        self,
        num_classes: int = 2,
        vocab_size: int = 30522,
        depth: int = 12,
        width: int = 768,
        num_heads: int | None = None,
        max_len: int = 512,
        seq_len: int = 16,
    ) -> None:
        super().__init__()
        num_heads = num_heads or max(1, width // 64)
        if width % num_heads:
            raise ValueError(f"width {width} is not a multiple of num_heads {num_heads}")
        if not 1 <= seq_len <= max_len:
            raise ValueError(f"seq_len {seq_len} must be in 1..max_len ({max_len})")
        if min(num_classes, vocab_size, depth, width, num_heads) < 1:
            raise ValueError("every size must be >= 1")
        self.num_classes, self.vocab_size, self.seq_len = num_classes, vocab_size, seq_len
        self.embeddings = BertEmbeddings(vocab_size, max_len, 2, width)
        self.encoder = BertEncoderStack(width, num_heads, depth)
        self.pooler = BertPooler(width)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.encoder(self.embeddings(input_ids))
        return self.classifier(self.pooler(x))

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_ids(batch, self.seq_len, self.vocab_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.num_classes)
