"""What a Megatron-LM checkpoint's pickles say, read without Megatron: inert objects, saved
``args``, and how each parameter is split across tensor-parallel ranks.

Each ``model_optim_rng.pt`` pickles, besides the rank's weights, objects Graft has no use for:
Megatron's ``args`` (an ``argparse.Namespace`` holding enums, torch dtypes and a
``signal.Signals``) and the RNG states (NumPy arrays). Those become :class:`Inert` placeholders:
the class's dotted name, the arguments it would have been called with and the state it would
have been given, as plain data. Nothing is imported, constructed or called; anything outside
this list (and the restricted unpickler's own) is still refused as unsafe.

The numbers the reader needs (TP/PP sizes, layers, vocab, query groups, SwiGLU) are read from
the placeholder of ``args``: its state is the namespace's ``__dict__``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError

__all__ = [
    "INERT_GLOBALS",
    "VOCAB_KEYS",
    "Inert",
    "MegatronArgs",
    "layer_index",
    "partition",
    "read_args",
]

# Globals read as placeholders, by exact (module, name), plus any name under these modules.
_INERT_EXACT = frozenset(
    {
        ("argparse", "Namespace"),
        ("signal", "Signals"),
        ("_codecs", "encode"),
        ("numpy", "dtype"),
        ("numpy", "ndarray"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("pathlib", "PosixPath"),
        ("_io", "BytesIO"),  # Transformer Engine's _extra_state
        ("io", "BytesIO"),
    }
)
_INERT_MODULES = ("megatron.",)  # Megatron's own enums and configs in args


class Inert:
    """An object the pickle describes and Graft never builds: its class's name, its call
    arguments and its state, as the unpickler met them."""

    __slots__ = ("args", "cls", "state")

    def __init__(self, cls: str, args: tuple[Any, ...]) -> None:
        self.cls: str = cls
        self.args: tuple[Any, ...] = args
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        if self.state is not None:
            raise UnsafeCheckpointError(f"unsafe checkpoint: {self.cls} is given a state twice")
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.cls}>"


class _InertClass:
    """What a placeholder global resolves to: calling it (``REDUCE``) or ``cls.__new__(cls)``
    (``NEWOBJ``) yields an :class:`Inert` that records the arguments; nothing else happens."""

    __slots__ = ("name",)

    def __new__(cls, *args: Any, **_kw: Any) -> Any:
        if isinstance(cls, _InertClass):  # NEWOBJ: marker.__new__(marker, *args)
            return Inert(cls.name, args)
        return super().__new__(cls)

    def __init__(self, name: str) -> None:
        self.name = name

    def __call__(self, *args: Any, **_kw: Any) -> Inert:
        return Inert(self.name, args)

    def __setstate__(self, _state: Any) -> None:
        raise UnsafeCheckpointError(f"unsafe checkpoint: the pickle tries to modify {self.name}")


class _InertGlobals(Mapping[tuple[str, str], Any]):
    """The unpickler's ``extra`` globals: a fresh placeholder class per lookup, so that no
    object is shared between loads."""

    def __contains__(self, key: object) -> bool:
        if not (isinstance(key, tuple) and len(key) == 2):
            return False
        module, name = key
        return key in _INERT_EXACT or (
            isinstance(module, str) and module.startswith(_INERT_MODULES) and bool(name)
        )

    def __getitem__(self, key: tuple[str, str]) -> Any:
        if key not in self:
            raise KeyError(key)
        return _InertClass(f"{key[0]}.{key[1]}")

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(_INERT_EXACT)

    def __len__(self) -> int:
        return len(_INERT_EXACT)


INERT_GLOBALS: Mapping[tuple[str, str], Any] = _InertGlobals()


@dataclass(frozen=True)
class MegatronArgs:
    """The numbers of Megatron's saved ``args`` the reader uses (``None``: not saved).

    Attributes:
        tensor_parallel: ``tensor_model_parallel_size``.
        pipeline_parallel: ``pipeline_model_parallel_size``.
        virtual_pipeline: ``virtual_pipeline_model_parallel_size`` (interleaved schedule).
        num_layers: the decoder's layers, all stages together.
        vocab_size: the true vocabulary (``--vocab-size``), when it was given.
        padded_vocab_size: the vocabulary the embedding holds, padded for TP.
        heads: ``num_attention_heads``.
        query_groups: ``num_query_groups`` (``heads`` without GQA).
        gated: the MLP is gated (SwiGLU): each rank's ``linear_fc1`` is [gate; up].
    """

    tensor_parallel: int
    pipeline_parallel: int
    virtual_pipeline: int | None
    num_layers: int | None
    vocab_size: int | None
    padded_vocab_size: int | None
    heads: int | None
    query_groups: int | None
    gated: bool


def _int(values: Mapping[str, Any], name: str) -> int | None:
    value = values.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def read_args(root: Mapping[str, Any], where: str) -> MegatronArgs:
    """The numbers in a rank file's ``args`` placeholder.

    Raises:
        UnreadableCheckpointError: no ``args`` namespace, or no TP/PP sizes in it.
    """
    args = root.get("args")
    if not (isinstance(args, Inert) and isinstance(args.state, dict)):
        raise UnreadableCheckpointError(
            f"{where} holds no Megatron args namespace: not a Megatron-LM checkpoint"
        )
    values = args.state
    tp = _int(values, "tensor_model_parallel_size")
    pp = _int(values, "pipeline_model_parallel_size")
    if tp is None or pp is None:
        raise UnreadableCheckpointError(f"{where}: args hold no tensor/pipeline parallel sizes")
    heads = _int(values, "num_attention_heads")
    groups = _int(values, "num_query_groups") if values.get("group_query_attention") else heads
    return MegatronArgs(
        tensor_parallel=tp,
        pipeline_parallel=pp,
        virtual_pipeline=_int(values, "virtual_pipeline_model_parallel_size"),
        num_layers=_int(values, "num_layers"),
        vocab_size=_int(values, "vocab_size"),
        padded_vocab_size=_int(values, "padded_vocab_size"),
        heads=heads,
        query_groups=groups,
        gated=bool(values.get("swiglu") or values.get("gated_linear_unit")),
    )


# How each parameter is split across TP ranks, by the end of its name (Megatron-Core's
# ColumnParallelLinear / RowParallelLinear / VocabParallelEmbedding, local and TE specs).
VOCAB_KEYS = ("embedding.word_embeddings.weight", "output_layer.weight", "output_layer.bias")
_COLUMN = re.compile(
    r".*\.(linear_qkv|linear_q|linear_kv|linear_q_proj|linear_q_down_proj|linear_q_up_proj"
    r"|linear_kv_down_proj|linear_kv_up_proj|linear_fc1)\.(weight|bias)"
)
_ROW = re.compile(r".*\.(linear_proj|linear_fc2)\.weight")
_REPLICATED = re.compile(
    r"(.*\.(linear_proj|linear_fc2)\.bias"
    r"|.*(layernorm|layer_norm|_norm)(\.weight|\.bias|_weight|_bias)"
    r"|embedding\.position_embeddings\.weight"
    r"|.*\.router\.(weight|expert_bias))"
)
_LAYER = re.compile(r"decoder\.layers\.(\d+)\.")


def partition(key: str, gated: bool) -> str:
    """How ``key`` is split across TP ranks.

    Returns:
        ``vocab`` (rows, padded), ``column`` (dim 0), ``gated`` (dim 0, each rank [gate; up]),
        ``row`` (dim 1) or ``replicated`` (every rank holds it whole).

    Raises:
        UnreadableCheckpointError: Graft does not know how Megatron splits ``key``.
    """
    if key in VOCAB_KEYS:
        return "vocab"
    if _COLUMN.fullmatch(key):
        return "gated" if gated and ".linear_fc1." in key else "column"
    if _ROW.fullmatch(key):
        return "row"
    if _REPLICATED.fullmatch(key):
        return "replicated"
    raise UnreadableCheckpointError(
        f"Graft does not know how Megatron splits {key!r} across tensor-parallel ranks "
        "(GPT's attention, MLP, norms and embeddings are known); save it with TP 1 to read it"
    )


def layer_index(key: str) -> tuple[int, str] | None:
    """``(local layer number, the rest of the key)`` for a decoder layer's key, else None."""
    match = _LAYER.match(key)
    if match is None:
        return None
    return int(match.group(1)), key[match.end() :]
