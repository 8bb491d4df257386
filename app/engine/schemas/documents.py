"""The models of the skeleton (``graft.skeleton/v1``) and inspection (``graft.inspect/v1``)
documents, from which their published JSON Schemas are generated.

The report and the manifest are typed where they are built (:mod:`app.engine.report`). A
skeleton is read by :func:`app.engine.target_spec.parse_skeleton` and an inspection written by
``Source.describe``; these models say what those documents hold.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema

from app.engine.meta import DTYPE_SIZES
from app.engine.report.models import Count, Shape, SourceFormat

__all__ = ["InspectDocument", "SkeletonDocument"]

# The dtypes a skeleton may name: every dtype the engine knows, in the engine's order.
Dtype = Annotated[str, WithJsonSchema({"enum": list(DTYPE_SIZES), "default": "float32"})]
TensorKind = Literal["parameter", "buffer"]


class _Part(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class SkeletonTensor(_Part):
    """One tensor of a skeleton: its shape, dtype, kind and module type."""

    shape: Shape
    dtype: Dtype = "float32"
    kind: TensorKind = "parameter"
    module: str | None = None


class SkeletonDocument(_Part):
    """A target with shapes but no values (SPEC §2): key -> shape, dtype, kind, module type."""

    schema_: Literal["graft.skeleton/v1"] = Field(alias="schema")
    tensors: Annotated[
        dict[Annotated[str, Field(min_length=1)], SkeletonTensor], Field(min_length=1)
    ]


class Tally(_Part):
    """Tensors and elements (and bytes) of one kind or dtype."""

    tensors: Count
    elements: Count
    bytes: Count | None = None


class InspectTotals(_Part):
    """The source's size: tensors, elements, bytes; by kind and by dtype."""

    tensors: Count
    elements: Count
    bytes: Count
    parameters: Tally | None = None
    buffers: Tally | None = None
    by_dtype: dict[str, Tally] | None = None


class InspectTensor(_Part):
    """One tensor of the source."""

    key: str
    shape: Shape
    dtype: str
    kind: TensorKind


class InspectLayout(_Part):
    """How a training checkpoint is laid out (DCP, Megatron-LM): its writers, and each
    tensor's chunks (Megatron: its tensor-parallel shards; Megatron-Core's torch_dist DCP
    folders: ``stacked_layers``, the decoder layers saved stacked and read one by one)."""

    format: Literal["dcp", "megatron"]
    version: str | None = None
    world_size: Count
    files: Count
    chunks: dict[str, Count]
    left_out: dict[str, dict[str, Count]]
    iteration: Count | Literal["release"] | None = None
    tensor_parallel: Count | None = None
    pipeline_parallel: Count | None = None
    layers_per_stage: dict[str, Count] | None = None
    vocab: dict[str, Count] | None = None
    stacked_layers: Count | None = None


class InspectZeroLayout(_Part):
    """How a DeepSpeed ZeRO checkpoint is laid out: stage, ranks, parallel degrees, and the
    names it keeps apart (frozen parameters, tied names)."""

    format: Literal["deepspeed"]
    version: str | None = None
    zero_stage: Literal[1, 2, 3]
    world_size: Count
    tp_degree: Count
    pp_degree: Count
    global_steps: Count | None = None
    entry: Literal["fp32", "module"]
    frozen: list[str] | None = None
    tied: dict[str, str] | None = None


class InspectDocument(_Part):
    """What `graft inspect --json` and GET /v1/checkpoints/{id}/inspect say about a source:
    format, chosen entry, every tensor, totals."""

    schema_: Literal["graft.inspect/v1"] = Field(alias="schema")
    paths: list[str] | None = None
    format: SourceFormat
    entry: str | None
    candidates: list[str] | None = None
    stripped_prefix: str | None = None
    common_prefix: str | None = None
    lightning: bool | None = None
    ignored: dict[str, str] | None = None
    metadata: dict[str, Any] | None = None
    totals: InspectTotals
    tensors: list[InspectTensor]
    layout: InspectLayout | InspectZeroLayout | None = None
