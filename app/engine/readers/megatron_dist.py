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
``linear_fc1.layer_norm_*``. The vocabulary keeps its padding rows (the folder does not say
the true size): a recipe can ``slice`` them off.

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

__all__ = ["MEGATRON_DIST_MARK", "is_megatron_dist", "unstack_layers"]

MEGATRON_DIST_MARK = "metadata.json"
_MAX_MARK_BYTES = 64 * 1024
_STACKED = "decoder.layers."
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
