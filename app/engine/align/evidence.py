"""What alignment knows about a key before comparing it with anything: its evidence.

Keys are grouped into *units*, the tensors of one module that move together (a BatchNorm's
five tensors, a Linear's weight and bias). Each unit carries its canonical name tokens (dotted
or ``/`` segments, split on ``_`` and at letter/digit edges, mapped through the usual synonyms),
its layer numbers, its position in file order, and each tensor's canonical leaf, shape and dtype.
TF-style ``kernel`` leaves are stored transposed, as PyTorch would hold them.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from app.engine.meta import TensorInfo

__all__ = [
    "LEAVES",
    "Tensor",
    "Unit",
    "ancestors",
    "build_units",
    "common_mass",
    "common_module",
    "idf_weights",
    "name_similarity",
    "path_evidence",
]

Shape = tuple[int, ...]

# Whole segments that mean one thing (checked before splitting on ``_``).
_SEGMENTS: dict[str, str] = {
    "wq": "q", "q_proj": "q", "query": "q", "q_lin": "q",
    "wk": "k", "k_proj": "k", "key": "k", "k_lin": "k",
    "wv": "v", "v_proj": "v", "value": "v", "v_lin": "v",
    "wo": "o", "o_proj": "o", "out_proj": "o", "out_lin": "o",
    "w1": "gate", "gate_proj": "gate", "w3": "up", "up_proj": "up",
    "w2": "down", "down_proj": "down",
    "c_attn": "qkv", "in_proj": "qkv",
    "attention_norm": "attn_norm", "input_layernorm": "attn_norm",
    "ffn_norm": "mlp_norm", "post_attention_layernorm": "mlp_norm",
    "tok_embeddings": "embed", "embed_tokens": "embed", "word_embeddings": "embed",
    "wte": "embed", "wpe": "pos_embed", "position_embeddings": "pos_embed",
    "lm_head": "head", "self_attn": "attn", "feed_forward": "mlp",
    "moving_mean": "running_mean", "moving_variance": "running_var",
    "layer_norm": "norm", "layernorm": "norm",
    "layernorm_before": "norm1", "layernorm_after": "norm2", "ln_1": "norm1", "ln_2": "norm2",
}  # fmt: skip

# Tokens (after splitting a segment on ``_``) that mean one thing.
_TOKENS: dict[str, str] = {
    "gamma": "weight", "kernel": "weight", "beta": "bias",
    "ln": "norm", "layernorm": "norm", "norm": "norm",
    "attention": "attn", "attn": "attn",
    "ffn": "mlp", "mlp": "mlp",
    "dense": "fc", "linear": "fc", "fc": "fc", "lin": "fc",
    "embeddings": "embed", "embedding": "embed", "embed": "embed", "emb": "embed",
    "layers": "layer", "layer": "layer", "blocks": "layer", "block": "layer", "h": "layer",
    "resblocks": "layer", "shortcut": "downsample", "bn": "norm",
}  # fmt: skip

# Canonical leaves: the tensor names a module registers. Anything else is a bare parameter.
LEAVES = frozenset({"weight", "bias", "running_mean", "running_var", "num_batches_tracked"})
# Words that say nothing about which module a key belongs to.
_STOP = frozenset({"model", "module", "base", "transformer", ""})
_SPLIT = re.compile(r"[./]")
_EDGE = re.compile(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])")


@dataclass(frozen=True)
class Tensor:
    """One key of a unit: its real name, canonical leaf, shape as PyTorch holds it, dtype."""

    key: str
    leaf: str  # canonical leaf, or "" for a bare parameter (``pos_embed``, TF ``word_embeddings``)
    shape: Shape
    dtype: str
    kernel: bool = False  # a TF-style 2-D ``kernel``: stored [in, out], shape here is [out, in]


@dataclass
class Unit:
    """The tensors of one module, with the evidence about that module."""

    path: str
    order: int
    tokens: Counter[str]
    numbers: tuple[int, ...]
    tensors: dict[str, Tensor] = field(default_factory=dict)  # canonical leaf -> tensor

    def signature(self) -> tuple[Shape, ...]:
        """The shapes of the unit's tensors (a counter's ``num_batches_tracked`` left out)."""
        return tuple(
            sorted(t.shape for leaf, t in self.tensors.items() if leaf != "num_batches_tracked")
        )

    @property
    def keys(self) -> list[str]:
        return [t.key for t in self.tensors.values()]


def _segment_tokens(segment: str) -> list[str]:
    lowered = segment.lower()
    if lowered in _SEGMENTS:
        lowered = _SEGMENTS[lowered]
        if "_" not in lowered and not _EDGE.search(lowered):
            return [lowered]
    out: list[str] = []
    for part in lowered.split("_"):
        for piece in _EDGE.split(part):
            out.append(_TOKENS.get(piece, piece))
    return out


def _split_key(key: str) -> tuple[str, str, str]:
    """(module path, raw leaf, separator) of a key; the leaf is "" for a bare parameter."""
    cut = max(key.rfind("."), key.rfind("/"))
    raw_leaf = key[cut + 1 :]
    leaf = _SEGMENTS.get(raw_leaf.lower(), _TOKENS.get(raw_leaf.lower(), raw_leaf.lower()))
    if cut < 0 or leaf not in LEAVES:
        return key, "", ""
    return key[:cut], raw_leaf, key[cut]


def path_evidence(path: str) -> tuple[Counter[str], tuple[int, ...]]:
    tokens: Counter[str] = Counter()
    numbers: list[int] = []
    for segment in _SPLIT.split(path):
        for token in _segment_tokens(segment):
            if token.isdigit():
                numbers.append(int(token))
            elif token not in _STOP:
                tokens[token] += 1
    return tokens, tuple(numbers)


def build_units(tensors: Mapping[str, TensorInfo]) -> list[Unit]:
    """Group keys into units (one module each), in file order.

    A module whose canonical leaves collide (``kernel`` and ``weight`` side by side) is split
    into one unit per key, so a unit never holds two tensors for one leaf.
    """
    units: dict[str, Unit] = {}
    for order, (key, info) in enumerate(tensors.items()):
        path, raw_leaf, _ = _split_key(key)
        leaf = _SEGMENTS.get(raw_leaf.lower(), _TOKENS.get(raw_leaf.lower(), raw_leaf.lower()))
        kernel = raw_leaf.lower() == "kernel" and len(info.shape) == 2
        shape = tuple(reversed(info.shape)) if kernel else tuple(info.shape)
        tensor = Tensor(key, leaf, shape, info.dtype, kernel)
        unit = units.get(path)
        if unit is not None and leaf in unit.tensors:
            path = key  # a collision: this key becomes a unit of its own
            unit = None
        if unit is None:
            tokens, numbers = path_evidence(path)
            unit = units[path] = Unit(path, order, tokens, numbers)
        unit.tensors[leaf] = tensor
    return list(units.values())


@functools.lru_cache(maxsize=1 << 16)
def ancestors(path: str, depth: int = 2) -> list[str]:
    """The enclosing modules of a unit's path, nearest first (``a.b.c`` -> ``a.b``, ``a``).

    Cached: callers must not change the list.
    """
    cuts = [m.start() for m in _SPLIT.finditer(path)]
    return [path[:c] for c in reversed(cuts)][:depth]


def common_module(paths: Sequence[str]) -> str:
    """The deepest module enclosing (or equal to) every path; ``""`` when they share none."""
    split = [_SPLIT.split(p) for p in paths]
    n = 0
    while all(len(parts) > n and parts[n] == split[0][n] for parts in split):
        n += 1
    if n == 0:
        return ""
    cuts = [0, *(m.start() for m in _SPLIT.finditer(paths[0])), len(paths[0])]
    return paths[0][: cuts[n]]


def idf_weights(units: Sequence[Unit]) -> dict[str, float]:
    """Inverse document frequency of each token over all units (rare tokens say more)."""
    df: Counter[str] = Counter()
    for unit in units:
        df.update(set(unit.tokens))
    n = max(len(units), 1)
    # A token every unit has says nothing (weight ~0); a rare one says a lot.
    return {token: math.log((n + 1) / count) for token, count in df.items()}


def name_similarity(a: Counter[str], b: Counter[str], idf: Mapping[str, float]) -> float:
    """IDF-weighted Dice similarity of two token multisets, in [0, 1]."""
    total = common_mass(a, a, idf) + common_mass(b, b, idf)
    return 2 * common_mass(a, b, idf) / total if total else 0.0


def common_mass(a: Counter[str], b: Counter[str], idf: Mapping[str, float]) -> float:
    """The IDF-weighted size of the tokens two multisets share."""
    if len(a) > len(b):
        a, b = b, a
    common = 0.0
    for t, c in a.items():
        other = b.get(t)
        if other:
            common += idf.get(t, 1.0) * min(c, other)
    return common
