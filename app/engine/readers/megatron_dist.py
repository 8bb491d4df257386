"""Megatron-Core's ``torch_dist`` checkpoints: a DCP folder, its decoder layers stacked.

``megatron.core.dist_checkpointing.save`` with the ``torch_dist`` backend (what
``--ckpt-format torch_dist`` writes per iteration) is a ``torch.distributed.checkpoint``
folder beside a ``metadata.json`` that says ``"sharded_backend": "torch_dist"``. Its tensors are
already global (each rank saved its tensor-parallel shard as a chunk, so no TP join is needed),
but the decoder's layers are saved stacked: ``decoder.layers.self_attention.linear_qkv.weight``
of shape ``[layers, …]``, one chunk per layer and shard. Graft reads each layer as its own
tensor, ``decoder.layers.N.self_attention.linear_qkv.weight``, from that layer's chunks alone.
Names are Megatron's sharded ones: the local spec's ``input_layernorm`` and
``pre_mlp_layernorm`` are saved as Transformer Engine's ``linear_qkv.layer_norm_*`` and
``linear_fc1.layer_norm_*``. A training run's save holds its ``args`` in the ``common_state``
value (a ``torch.save`` pickle, read through the restricted unpickler with Megatron's objects
as inert placeholders, as the legacy reader reads them): the vocabulary's padding rows are then
cut to ``args.vocab_size``. Without it (``dist_checkpointing.save`` of a bare model) they are
kept, and a recipe can ``slice`` them off.

The ``.metadata`` pickle is read by the DCP reader (:mod:`dcp_metadata`); the save plans
Megatron adds to it are inert placeholders. No Megatron code is imported or called.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path

from app.engine.errors import UnreadableCheckpointError
from app.engine.readers.dcp_metadata import DcpChunk, DcpMetadata, DcpTensor
from app.engine.readers.megatron_layout import (
    INERT_GLOBALS,
    VOCAB_KEYS,
    MegatronArgs,
    read_args,
)
from app.engine.readers.torch_zip import ZipReader

__all__ = ["MEGATRON_DIST_MARK", "cut_vocab", "is_megatron_dist", "saved_args", "unstack_layers"]

MEGATRON_DIST_MARK = "metadata.json"
_MAX_MARK_BYTES = 64 * 1024
_STACKED = "decoder.layers."
_COMMON = "common_state"
_ONE_LAYER = re.compile(r"decoder\.layers\.\d+\.")


def is_megatron_dist(files: Mapping[str, Path]) -> bool:
    """True when the DCP folder's ``metadata.json`` names Megatron's ``torch_dist`` backend."""
    mark = files.get(MEGATRON_DIST_MARK)
    if mark is None or not mark.is_file() or mark.stat().st_size > _MAX_MARK_BYTES:
        return False
    try:
        text = json.loads(mark.read_bytes())
    except (UnicodeDecodeError, ValueError):
        return False
    return isinstance(text, dict) and text.get("sharded_backend") == "torch_dist"


def _layer(tensor: DcpTensor, index: int, key: str) -> DcpTensor:
    chunks = tuple(
        DcpChunk(c.offsets[1:], c.sizes[1:], c.file, c.offset, c.length)
        for c in tensor.chunks
        if math.prod(c.sizes) and c.offsets[0] == index
    )
    return DcpTensor(key, tensor.shape[1:], tensor.dtype, chunks, tensor.squeeze + 1)


def unstack_layers(meta: DcpMetadata) -> tuple[DcpMetadata, int | None]:
    """``meta`` with each stacked ``decoder.layers.*`` tensor as one tensor per layer
    (``decoder.layers.N.*``, layer-major where the first stacked one was), and the layer count
    (None: nothing stacked).

    Raises:
        UnreadableCheckpointError: a stacked tensor whose chunks span several layers, or
            stacked tensors that disagree on the number of layers.
    """
    layers: int | None = None
    stacked: dict[str, DcpTensor] = {}
    for fqn, tensor in meta.tensors.items():
        if not fqn.startswith(_STACKED) or _ONE_LAYER.match(fqn):
            continue
        if not tensor.shape or any(c.sizes[0] != 1 for c in tensor.chunks if math.prod(c.sizes)):
            raise UnreadableCheckpointError(
                f"{fqn}: a Megatron torch_dist tensor not saved one layer per chunk; not read yet"
            )
        if layers is not None and tensor.shape[0] != layers:
            raise UnreadableCheckpointError(
                f"{fqn} stacks {tensor.shape[0]} layers where the others stack {layers}"
            )
        layers = tensor.shape[0]
        stacked[fqn] = tensor
    if layers is None:
        return meta, None
    tensors: dict[str, DcpTensor] = {}
    for fqn, tensor in meta.tensors.items():
        if fqn not in stacked:
            tensors[fqn] = tensor
        elif fqn == next(iter(stacked)):
            for index in range(layers):
                for name, whole in stacked.items():
                    key = f"{_STACKED}{index}.{name[len(_STACKED) :]}"
                    tensors[key] = _layer(whole, index, key)
    return dataclasses.replace(meta, tensors=tensors), layers


def saved_args(
    files: Mapping[str, Path], meta: DcpMetadata
) -> tuple[MegatronArgs, int | None] | None:
    """The ``args`` a training run saved in the ``common_state`` value, and its iteration;
    None when there is no such value, or no ``args`` in it.

    Raises:
        UnsafeCheckpointError: its pickle names anything that could run code.
    """
    name = next((v for v in meta.values if v.split("/", 1)[0] == _COMMON), None)
    where = meta.value_at.get(name) if name is not None else None
    if where is None or where[0] not in files:
        return None
    file, offset, length = where
    reader = ZipReader(files[file], (offset, length), extra=INERT_GLOBALS)
    try:
        root = reader.parsed.root
    finally:
        reader.close()
    if isinstance(root, list) and len(root) == 1:  # saved as a one-element sharded object
        root = root[0]
    if not isinstance(root, dict):
        return None
    try:
        args = read_args(root, _COMMON)
    except UnreadableCheckpointError:
        return None
    iteration = root.get("iteration")
    valid = isinstance(iteration, int) and not isinstance(iteration, bool) and iteration >= 0
    return args, iteration if valid else None


def cut_vocab(meta: DcpMetadata, args: MegatronArgs) -> DcpMetadata:
    """``meta`` with the vocabulary's padding rows cut to ``args.vocab_size``."""
    kept = args.vocab_size
    tensors = dict(meta.tensors)
    for key in VOCAB_KEYS:
        tensor = tensors.get(key)
        if tensor is None or kept is None or not tensor.shape or kept >= tensor.shape[0]:
            continue
        tensors[key] = dataclasses.replace(
            tensor, shape=(kept, *tensor.shape[1:]), rows=tensor.shape[0]
        )
    return dataclasses.replace(meta, tensors=tensors)
