"""transformers' ``BertModel``: the same state-dict keys and the same forward pass.

Written in this project from the published architecture (Devlin et al., 2019) as Hugging Face
lays it out: ``embeddings.{word,position,token_type}_embeddings`` + ``embeddings.LayerNorm``,
``encoder.layer.N.{attention.self.{query,key,value}, attention.output.{dense,LayerNorm},
intermediate.dense, output.{dense,LayerNorm}}``, ``pooler.dense``; post-norm layers, exact GELU.
The kwargs are ``BertConfig``'s names, and ``hf_config`` writes them as its ``config.json``.
``forward`` returns the last hidden state; ``pooler`` turns it into ``BertModel``'s
``pooler_output``.
"""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.examples import example_ids

__all__ = ["EXAMPLE_LENGTH", "BertEmbeddings", "BertLayer", "BertModel", "BertPooler"]

# Tokens in the example input, unless the config's position table is shorter.
EXAMPLE_LENGTH = 16


class BertSelfAttention(nn.Module):
    """Scaled dot-product attention over ``query`` / ``key`` / ``value`` projections."""

    def __init__(self, hidden: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(
            heads(self.query(x)), heads(self.key(x)), heads(self.value(x)), attn_mask=mask
        )
        return out.transpose(1, 2).reshape(b, n, c)


class BertOutput(nn.Module):
    """``LayerNorm(dense(x) + residual)``: post-norm, as BERT does."""

    def __init__(self, dim_in: int, hidden: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(dim_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.LayerNorm(self.dense(x) + residual)
        return out


class BertAttention(nn.Module):
    def __init__(self, hidden: int, num_heads: int, eps: float) -> None:
        super().__init__()
        self.self = BertSelfAttention(hidden, num_heads)
        self.output = BertOutput(hidden, hidden, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        out: torch.Tensor = self.output(self.self(x, mask), x)
        return out


class BertIntermediate(nn.Module):
    def __init__(self, hidden: int, intermediate: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, intermediate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Attention, then the feed-forward block, each with its residual and LayerNorm."""

    def __init__(self, hidden: int, num_heads: int, intermediate: int, eps: float) -> None:
        super().__init__()
        self.attention = BertAttention(hidden, num_heads, eps)
        self.intermediate = BertIntermediate(hidden, intermediate)
        self.output = BertOutput(intermediate, hidden, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, mask)
        out: torch.Tensor = self.output(self.intermediate(x), x)
        return out


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, then LayerNorm."""

    position_ids: torch.Tensor

    def __init__(
        self, vocab_size: int, max_positions: int, type_vocab_size: int, hidden: int, eps: float
    ) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(vocab_size, hidden)
        self.position_embeddings = nn.Embedding(max_positions, hidden)
        self.token_type_embeddings = nn.Embedding(type_vocab_size, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        # Not in the state dict (as in transformers): rebuilt by the constructor on any device.
        self.register_buffer(
            "position_ids", torch.arange(max_positions).unsqueeze(0), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        out: torch.Tensor = self.LayerNorm(x + self.token_type_embeddings(token_type_ids))
        return out


class BertEncoder(nn.Module):
    def __init__(self, layers: list[BertLayer]) -> None:
        super().__init__()
        self.layer = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, mask)
        return x


class BertPooler(nn.Module):
    """``tanh(dense(hidden[:, 0]))``: the [CLS] token's pooled output."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.dense(hidden_states[:, 0]))


class BertModel(nn.Module):
    """transformers' ``BertModel`` (with its pooler), configured by ``BertConfig``'s names.

    Args:
        vocab_size: rows of the word embedding.
        hidden_size: token width; a multiple of ``num_attention_heads``.
        num_hidden_layers: encoder layers.
        num_attention_heads: attention heads.
        intermediate_size: the feed-forward block's width.
        max_position_embeddings: rows of the position embedding (the longest input).
        type_vocab_size: rows of the token-type embedding.
        layer_norm_eps: every LayerNorm's epsilon.

    The example input (Graft's forward check) is ``EXAMPLE_LENGTH`` tokens, or
    ``max_position_embeddings`` when that is shorter: every valid config can be checked.
    """

    # Adapted by default when a checkpoint's shapes differ (``app.engine.adaptations``):
    # another ``max_position_embeddings`` crops the position table, or extends it.
    adaptations: ClassVar[dict[str, Any]] = {"pos_embed": "embeddings.position_embeddings"}

    def __init__(
        self,
        vocab_size: int = 30522,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        intermediate_size: int = 3072,
        max_position_embeddings: int = 512,
        type_vocab_size: int = 2,
        layer_norm_eps: float = 1e-12,
    ) -> None:
        super().__init__()
        sizes = (vocab_size, hidden_size, num_hidden_layers, num_attention_heads,
                 intermediate_size, max_position_embeddings, type_vocab_size)  # fmt: skip
        if min(sizes) < 1 or not layer_norm_eps > 0:
            raise ValueError("every size must be >= 1 and layer_norm_eps > 0")
        if hidden_size % num_attention_heads:
            raise ValueError(
                f"hidden_size {hidden_size} is not a multiple of num_attention_heads "
                f"{num_attention_heads}"
            )
        self.vocab_size, self.hidden_size = vocab_size, hidden_size
        self.seq_len = min(EXAMPLE_LENGTH, max_position_embeddings)
        self.embeddings = BertEmbeddings(
            vocab_size, max_position_embeddings, type_vocab_size, hidden_size, layer_norm_eps
        )
        layers = [
            BertLayer(hidden_size, num_attention_heads, intermediate_size, layer_norm_eps)
            for _ in range(num_hidden_layers)
        ]
        self.encoder = BertEncoder(layers)
        self.pooler = BertPooler(hidden_size)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The last hidden state ``[batch, length, hidden_size]`` (``BertModel``'s first output).

        Args:
            input_ids: token ids ``[batch, length]``.
            attention_mask: 1 for tokens to attend to, 0 for padding; default all ones.
            token_type_ids: segment ids; default all zeros.
        """
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        mask = None
        if attention_mask is not None:
            # Padding keys are masked out for every query, as transformers' extended mask does.
            mask = attention_mask[:, None, None, :].to(torch.bool)
        out: torch.Tensor = self.encoder(self.embeddings(input_ids, token_type_ids), mask)
        return out

    @classmethod
    def hf_config(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """transformers' ``config.json`` for these kwargs: a folder output loads with
        ``AutoModel.from_pretrained`` as a ``BertModel`` computing the same function."""
        bound = inspect.signature(cls).bind(**kwargs)
        bound.apply_defaults()
        config = {k: v for k, v in bound.arguments.items() if k != "seq_len"}
        return {
            "model_type": "bert",
            "architectures": ["BertModel"],
            **config,
            # What this module computes: exact GELU, absolute positions, no dropout at eval.
            "hidden_act": "gelu",
            "position_embedding_type": "absolute",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "initializer_range": 0.02,
            "pad_token_id": 0,
        }

    def example_input(self, batch: int = 2) -> torch.Tensor:
        return example_ids(batch, self.seq_len, self.vocab_size)

    def example_output_shape(self, batch: int = 2) -> tuple[int, ...]:
        return (batch, self.seq_len, self.hidden_size)
