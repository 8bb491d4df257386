"""Which dict of tensors in a pickled checkpoint holds the weights (SPEC §1's ``entry``)."""

from __future__ import annotations

import math
from typing import Any

from app.engine.errors import UnreadableCheckpointError
from app.engine.meta import TensorInfo, guess_kind
from app.engine.readers.base import Reader
from app.engine.readers.safetensors_file import SafetensorsReader
from app.engine.readers.unpickler import TensorRef

__all__ = ["ENTRY_ORDER", "choose_entry", "describe_value", "reader_tensors"]

# Checked in this order by ``entry: auto`` (SPEC §1): EMA first, then the usual names.
_EMA_ENTRIES = ("model_ema", "state_dict_ema", "ema_state_dict", "ema_model", "ema")
_PLAIN_ENTRIES = ("state_dict", "model", "module", "net", "params")
ENTRY_ORDER = (*_EMA_ENTRIES, *_PLAIN_ENTRIES)


def _is_tensor_dict(node: Any) -> bool:
    return (
        isinstance(node, dict)
        and bool(node)
        and all(isinstance(k, str) for k in node)
        and all(isinstance(v, TensorRef) for v in node.values())
    )


def _tensor_dicts(root: Any, max_depth: int = 4) -> dict[str, dict[str, TensorRef]]:
    """Candidate weight entries: str-keyed dicts of tensors, by dotted path ('' = the root)."""
    found: dict[str, dict[str, TensorRef]] = {}
    stack: list[tuple[str, Any, int]] = [("", root, 0)]
    while stack:
        path, node, depth = stack.pop()
        if not isinstance(node, dict):
            continue
        if _is_tensor_dict(node):
            found[path] = node
            continue
        if depth >= max_depth:
            continue
        for k, v in node.items():
            if isinstance(k, str) and isinstance(v, dict) and not k.startswith("optimizer"):
                stack.append((f"{path}.{k}" if path else k, v, depth + 1))
    return found


def _resolve_path(root: Any, path: str) -> Any:
    node = root
    if isinstance(node, dict) and path in node:
        return node[path]
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            raise UnreadableCheckpointError(f"entry {path!r} not found in the checkpoint")
        node = node[part]
    return node


def choose_entry(root: Any, entry: str) -> tuple[str | None, dict[str, TensorRef], list[str]]:
    """Pick the weights entry; returns (entry path or None for the root, tensors, candidates)."""
    if _is_tensor_dict(root):
        if entry not in ("auto", ""):
            raise UnreadableCheckpointError(
                f"entry {entry!r} requested, but the checkpoint is a flat state dict"
            )
        return None, root, []
    if not isinstance(root, dict):
        raise UnreadableCheckpointError(
            f"the checkpoint holds a {type(root).__name__}, not a dict of tensors"
        )
    candidates = _tensor_dicts(root)
    if entry != "auto":
        node = _resolve_path(root, entry)
        if not _is_tensor_dict(node):
            raise UnreadableCheckpointError(f"entry {entry!r} is not a dict of tensors")
        return entry, node, sorted(candidates)
    for name in ENTRY_ORDER:
        if name in candidates:
            return name, candidates[name], sorted(candidates)
    if not candidates:
        raise UnreadableCheckpointError("no dict of tensors found in the checkpoint")

    def size(item: tuple[str, dict[str, TensorRef]]) -> int:
        return sum(math.prod(r.shape) for r in item[1].values())

    best = max(candidates.items(), key=size)
    return best[0], best[1], sorted(candidates)


def describe_value(value: Any) -> str:
    if isinstance(value, dict):
        return f"dict[{len(value)}]"
    if isinstance(value, list | tuple):
        return f"{type(value).__name__}[{len(value)}]"
    if isinstance(value, TensorRef):
        return "tensor"
    if isinstance(value, str | int | float | bool) or value is None:
        return f"{type(value).__name__} = {str(value)[:60]}"
    return type(value).__name__


def reader_tensors(
    reader: Reader, entry: str
) -> tuple[str | None, dict[str, tuple[Any, TensorInfo]], list[str]]:
    """The chosen entry of one file: key -> (read handle, description), plus candidates."""
    root = reader.parsed.root
    if isinstance(reader, SafetensorsReader):
        if entry not in ("auto", ""):
            raise UnreadableCheckpointError("safetensors files have no entries to choose from")
        return None, {k: (k, info) for k, info in root.items()}, []
    chosen, refs, candidates = choose_entry(root, entry)
    tensors = {}
    for key, ref in refs.items():
        kind = "parameter" if ref.is_parameter else guess_kind(key, ref.dtype)
        tensors[key] = (ref, TensorInfo(key, ref.shape, ref.dtype, kind))
    return chosen, tensors, candidates
