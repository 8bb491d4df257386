"""Merge a PEFT LoRA adapter into its base weights, or take it back out: ``W ± s·B·A``.

The adapter is PEFT's folder as ``save_pretrained`` writes it: ``adapter_config.json`` (``r``,
``lora_alpha``, ``use_rslora``, ``fan_in_fan_out``, ``rank_pattern``, ``alpha_pattern``,
``modules_to_save``) and ``adapter_model.safetensors`` with keys
``base_model.model.<module>.lora_A.weight`` / ``lora_B.weight`` (embeddings:
``lora_embedding_A`` / ``lora_embedding_B``). Each target module's base key is
``<module>.weight``; its scale is ``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), ``r`` and
``alpha`` taken per module from the patterns when they name it, as PEFT does.

The output is one safetensors file streamed in base-key order: one module is read, merged and
written at a time, so memory holds one weight and its two factors, never the model. The delta
and the sum are computed in float64 and rounded once to the base weight's dtype (float32
arithmetic would round twice, and float64 keeps ``unmerge`` as close to the base as the merged
weight's precision allows: within one unit in the last place of the larger of the merged and
base values; bit-exact wherever the delta does not move the weight across a power of two).
``modules_to_save`` replace their base tensors on merge; they cannot be unmerged, since the
adapter does not hold the tensors they replaced.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from app.engine.errors import InvalidTargetError, UnreadableCheckpointError
from app.engine.meta import DTYPE_SIZES
from app.engine.output.digests import tensor_bytes
from app.engine.output.files import atomic_output
from app.engine.output.safetensors_writer import (
    SINGLE_NAME,
    header_bytes,
    shard_names,
    split_shards,
    write_index,
)
from app.engine.readers import SAFETENSORS_DTYPES, Source, open_source

if TYPE_CHECKING:
    import torch

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "LoraAdapter",
    "LoraModule",
    "LoraResult",
    "adapter_from",
    "apply_lora",
    "check_config",
    "check_targets",
    "lora_delta",
    "read_adapter",
]

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"

Kind = Literal["linear", "embedding", "conv"]

# PEFT's saved keys, with or without the adapter's name (``lora_A.default.weight``).
_FACTOR = re.compile(
    r"^(?:base_model\.model\.)?(?P<module>.+)\."
    r"(?:lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight|lora_embedding_(?P<eab>[AB])(?:\.[^.]+)?)$"
)
# A modules_to_save tensor: PEFT 0.22 saves it under the base key, older ones under
# ``<module>.modules_to_save[.default].<param>``.
_SAVED = re.compile(r"^(?:base_model\.model\.)?(?P<key>.+)$")
_SAVED_INFIX = re.compile(r"\.modules_to_save\.(?:default\.)?")
_ST_DTYPES = frozenset(SAFETENSORS_DTYPES.values())


@dataclass(frozen=True)
class LoraModule:
    """One target module: its base key, its two factors' adapter keys, rank, alpha and scale."""

    module: str
    base_key: str
    a_key: str
    b_key: str
    kind: Kind
    rank: int
    alpha: float
    scale: float


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA adapter folder, read from its config and its weights' header.

    Attributes:
        path: the folder.
        config: ``adapter_config.json`` as read.
        fan_in_fan_out: the base stores linear weights as ``[in, out]`` (GPT-2's ``Conv1D``).
        modules: module name -> :class:`LoraModule`, in adapter-file order.
        saved: base key -> adapter key of each ``modules_to_save`` tensor.
    """

    path: Path
    config: dict[str, Any]
    fan_in_fan_out: bool
    modules: dict[str, LoraModule]
    saved: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LoraResult:
    """What :func:`apply_lora` wrote.

    Attributes:
        output: the safetensors file.
        mode: ``merge`` or ``unmerge``.
        modules: the merged (or unmerged) modules with their rank, alpha and scale.
        replaced: base keys that ``modules_to_save`` replaced.
        copied: base tensors written unchanged.
    """

    output: Path
    mode: Literal["merge", "unmerge"]
    modules: list[LoraModule]
    replaced: list[str]
    copied: int

    def as_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "mode": self.mode,
            "modules": [_module_json(m) for m in self.modules],
            "replaced": self.replaced,
            "copied": self.copied,
        }


def _module_json(m: LoraModule) -> dict[str, Any]:
    return {"module": m.module, "key": m.base_key, "kind": m.kind, "rank": m.rank,
            "alpha": m.alpha, "scale": m.scale}  # fmt: skip


def read_adapter(folder: Path, *, alpha: float | None = None) -> LoraAdapter:
    """Read a PEFT LoRA adapter folder (its config and its weights' header, not the data).

    Args:
        folder: the folder holding ``adapter_config.json`` and ``adapter_model.safetensors``.
        alpha: use this ``lora_alpha`` for every module instead of the config's (and its
            ``alpha_pattern``).

    Raises:
        UnreadableCheckpointError: a file missing, a config that is not LoRA or asks for
            what a plain merge cannot do (DoRA, LoRA biases), or keys that do not pair up.
    """
    folder = Path(folder)
    config = _read_config(folder)
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UnreadableCheckpointError(
            f"{folder} has no {ADAPTER_WEIGHTS}: save the adapter with PEFT's "
            "save_pretrained(..., safe_serialization=True)"
        )
    with open_source(weights, strip_prefixes="none") as src:
        tensors = {k: (tuple(t.shape), t.dtype) for k, t in src.tensors.items()}
    return adapter_from(folder, config, tensors, alpha=alpha, where=str(weights))


def adapter_from(
    folder: Path,
    config: dict[str, Any],
    tensors: dict[str, tuple[tuple[int, ...], str]],
    *,
    alpha: float | None = None,
    where: str = "the adapter",
) -> LoraAdapter:
    """An adapter from its config (``adapter_config.json``'s content) and its weights' header
    (key -> (shape, dtype)), as :func:`read_adapter` reads them from a folder.

    Raises:
        UnreadableCheckpointError: as :func:`read_adapter`.
    """
    check_config(config, where)
    pairs: dict[str, dict[str, str]] = {}
    saved: dict[str, str] = {}
    for key in tensors:
        if m := _FACTOR.match(key):
            pairs.setdefault(m["module"], {})[m["ab"] or m["eab"]] = key
        elif config.get("modules_to_save") and (m := _SAVED.match(key)):
            saved[_SAVED_INFIX.sub(".", m["key"])] = key
        else:
            raise UnreadableCheckpointError(
                f"{where}: key {key!r} is neither a LoRA factor nor a modules_to_save "
                "tensor (this merge handles PEFT's LoRA, without DoRA or LoRA biases)"
            )
    modules = {name: _module(name, ab, tensors, config, alpha) for name, ab in pairs.items()}
    return LoraAdapter(folder, config, bool(config.get("fan_in_fan_out")), modules, saved)


def lora_delta(
    a: torch.Tensor, b: torch.Tensor, *, kind: Kind, scale: float, fan_in_fan_out: bool
) -> torch.Tensor:
    """``scale · B·A`` in float64, in the base weight's layout (PEFT's ``get_delta_weight``).

    Args:
        a: ``lora_A``: ``[r, in]`` (linear), ``[r, num_embeddings]`` (embedding) or
            ``[r, in, kh, kw]`` (conv).
        b: ``lora_B``: ``[out, r]``, ``[dim, r]`` or ``[out, r, 1, 1]``.
        kind: the base module's kind.
        scale: ``alpha / r`` (or ``alpha / sqrt(r)``).
        fan_in_fan_out: linear weights stored ``[in, out]``: the delta is transposed.
    """
    import torch
    import torch.nn.functional as F

    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    if kind == "embedding":
        delta = (b64 @ a64).T
    elif kind == "conv":
        if a64.shape[2:] == (1, 1):
            delta = (b64.flatten(1) @ a64.flatten(1))[:, :, None, None]
        else:
            delta = F.conv2d(a64.permute(1, 0, 2, 3), b64).permute(1, 0, 2, 3)
    else:
        delta = b64 @ a64
        if fan_in_fan_out:
            delta = delta.T
    return delta * scale


def apply_lora(
    base: Path,
    adapter: LoraAdapter,
    output: Path,
    *,
    mode: Literal["merge", "unmerge"] = "merge",
    max_shard_size: int | None = None,
) -> LoraResult:
    """Write ``base`` with ``adapter`` merged into it (or taken out of it), streamed.

    Args:
        base: the base checkpoint (any format Graft reads: safetensors, a sharded folder,
            a torch file); for ``unmerge``, the merged one.
        adapter: from :func:`read_adapter`.
        output: the safetensors file to write; with ``max_shard_size``, the folder of shards
            (as ``save_pretrained`` names them, with their index). Written atomically.
        mode: ``merge`` adds ``scale·B·A``; ``unmerge`` subtracts it.
        max_shard_size: shards of at most this many bytes (a tensor larger than that gets
            a shard of its own).

    Raises:
        InvalidTargetError: a target module's weight is missing from the base or has another
            shape; ``unmerge`` of an adapter with ``modules_to_save``.
    """
    if mode == "unmerge" and adapter.saved:
        raise InvalidTargetError(
            f"cannot unmerge {sorted(adapter.saved)}: the adapter's modules_to_save replaced "
            "them on merge and it does not hold the originals; take them from the base model"
        )
    with (
        open_source(base, strip_prefixes="none") as src,
        open_source(adapter.path / ADAPTER_WEIGHTS, strip_prefixes="none") as factors,
    ):
        by_key = {m.base_key: m for m in adapter.modules.values()}
        check_targets(src, factors, adapter, by_key)
        metadata = {**src.metadata, "format": "pt"}
        shards = split_shards(list(src.tensors), lambda k: _nbytes(src, k), max_shard_size)
        names = shard_names(len(shards)) if len(shards) > 1 else [SINGLE_NAME]
        sign = 1.0 if mode == "merge" else -1.0
        with atomic_output(Path(output), folder=max_shard_size is not None) as tmp:
            for name, keys in zip(names, shards, strict=True):
                path = tmp / name if max_shard_size is not None else tmp
                with path.open("wb") as f:
                    f.write(_header(src, keys, metadata))
                    for key in keys:
                        t = _tensor(key, (src, factors), adapter, by_key.get(key), sign)
                        f.write(tensor_bytes(t))
                        del t  # one module in memory at a time
            if len(shards) > 1:
                weight_map = {k: n for n, keys in zip(names, shards, strict=True) for k in keys}
                write_index(tmp, weight_map, sum(_nbytes(src, k) for k in weight_map), metadata)
    touched = len(by_key) + len(adapter.saved)
    return LoraResult(
        Path(output), mode, list(by_key.values()), sorted(adapter.saved), len(src.tensors) - touched
    )


def _tensor(
    key: str,
    sources: tuple[Source, Source],
    adapter: LoraAdapter,
    m: LoraModule | None,
    sign: float,
) -> torch.Tensor:
    """One output tensor: the base's, with its module's delta added (or subtracted)."""
    import torch

    src, factors = sources
    t = src.read(key)
    if m is not None:
        delta = lora_delta(
            factors.read(m.a_key), factors.read(m.b_key), kind=m.kind, scale=m.scale,
            fan_in_fan_out=adapter.fan_in_fan_out,
        )  # fmt: skip
        return (t.to(torch.float64) + sign * delta).to(t.dtype)
    if key in adapter.saved:
        return factors.read(adapter.saved[key]).to(t.dtype)
    return t


def _nbytes(src: Source, key: str) -> int:
    info = src.tensors[key]
    return math.prod(info.shape) * DTYPE_SIZES[info.dtype]


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / ADAPTER_CONFIG
    if not path.is_file():
        raise UnreadableCheckpointError(
            f"{folder} has no {ADAPTER_CONFIG}: pass the folder PEFT's save_pretrained wrote"
        )
    try:
        config = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnreadableCheckpointError(f"{path} is not JSON: {exc}") from exc
    return check_config(config, str(path))


def check_config(config: Any, path: str) -> dict[str, Any]:
    """A PEFT LoRA config a plain merge can carry out (no DoRA, no LoRA biases).

    Raises:
        UnreadableCheckpointError: naming ``path`` and what is wrong.
    """
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise UnreadableCheckpointError(f"{path}: peft_type must be LORA")
    if config.get("use_dora"):
        raise UnreadableCheckpointError(f"{path}: DoRA adapters are not supported (use_dora)")
    if config.get("lora_bias"):
        raise UnreadableCheckpointError(f"{path}: LoRA biases are not supported (lora_bias)")
    if not isinstance(config.get("r"), int) or not isinstance(
        config.get("lora_alpha"), int | float
    ):
        raise UnreadableCheckpointError(f"{path}: r and lora_alpha must be numbers")
    return config


def _pattern_value(patterns: dict[str, Any] | None, module: str, default: Any) -> Any:
    """PEFT's ``get_pattern_key``: the first pattern that matches the module's name's tail."""
    import re2

    for pattern, value in (patterns or {}).items():
        if re2.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def _module(
    name: str,
    ab: dict[str, str],
    tensors: dict[str, tuple[tuple[int, ...], str]],
    config: dict[str, Any],
    alpha_override: float | None,
) -> LoraModule:
    if set(ab) != {"A", "B"}:
        missing = "lora_B" if "A" in ab else "lora_A"
        raise UnreadableCheckpointError(f"module {name!r} has no {missing} in the adapter")
    (a_shape, _), (b_shape, _) = tensors[ab["A"]], tensors[ab["B"]]
    embedding = "lora_embedding_" in ab["A"]
    kind: Kind = "embedding" if embedding else "conv" if len(a_shape) == 4 else "linear"
    rank = int(_pattern_value(config.get("rank_pattern"), name, config["r"]))
    # lora_A's rows (an embedding's too: [r, num_embeddings]) are the module's rank.
    if a_shape[0] != rank or b_shape[1] != rank:
        raise UnreadableCheckpointError(
            f"module {name!r}: lora_A {list(a_shape)} and lora_B {list(b_shape)} do not have "
            f"the rank {rank} that adapter_config.json gives it (r / rank_pattern)"
        )
    alpha = float(
        alpha_override
        if alpha_override is not None
        else _pattern_value(config.get("alpha_pattern"), name, config["lora_alpha"])
    )
    scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
    base_key = f"{name}.weight"
    return LoraModule(name, base_key, ab["A"], ab["B"], kind, rank, alpha, scale)


def check_targets(
    src: Source, factors: Source, adapter: LoraAdapter, by_key: dict[str, LoraModule]
) -> None:
    """Every target weight is in the base with the shape its factors make, before any write.

    Raises:
        InvalidTargetError: a weight missing from the base, or of another shape.
    """
    for key in [*by_key, *adapter.saved]:
        if key not in src.tensors:
            raise InvalidTargetError(
                f"the base has no {key!r}, which the adapter changes: was the adapter trained "
                "on this model? (its keys are the PEFT model's, base_model.model.<module>)"
            )
    for key, m in by_key.items():
        a, b = factors.tensors[m.a_key].shape, factors.tensors[m.b_key].shape
        if m.kind == "embedding":
            want: tuple[int, ...] = (a[1], b[0])
        elif m.kind == "conv":
            want = (b[0], a[1], *a[2:])
        else:
            want = (a[1], b[0]) if adapter.fan_in_fan_out else (b[0], a[1])
        got = tuple(src.tensors[key].shape)
        if got != want:
            raise InvalidTargetError(
                f"{key!r} is {list(got)} but the adapter's factors make {list(want)}"
                + (" (fan_in_fan_out is set)" if adapter.fan_in_fan_out else "")
            )
    for key in adapter.saved:
        got, new = src.tensors[key].shape, factors.tensors[adapter.saved[key]].shape
        if tuple(got) != tuple(new):
            raise InvalidTargetError(f"{key!r} is {list(got)}; modules_to_save has {list(new)}")


def _header(src: Source, keys: list[str], metadata: dict[str, str]) -> bytes:
    """The output's safetensors header: the base's keys, shapes and dtypes, in its order."""
    for key in keys:
        if src.tensors[key].dtype not in _ST_DTYPES:
            raise InvalidTargetError(
                f"{key!r} is {src.tensors[key].dtype}, which safetensors cannot store"
            )
    raw = header_bytes(((k, src.tensors[k].shape, src.tensors[k].dtype) for k in keys), metadata)
    return len(raw).to_bytes(8, "little") + raw
