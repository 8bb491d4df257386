"""The recipe's ``lora`` step: a PEFT adapter merged into its base source as it is read.

With ``sources: {base: …, adapter: …}`` and ``lora: {merge: adapter}``, every weight the
adapter targets (``base:<module>.weight``) reads as ``W + (alpha / r) * B @ A``, computed as
:func:`app.engine.lora.lora_delta` does (float64, rounded once), one module at a time when the
conversion reads it; ``modules_to_save`` tensors read as the adapter's. The adapter's own keys
leave the key list (the report's ``source`` still lists it). Renames and every other rule then
see the merged base, so a merge and a conversion are one streaming pass.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import InvalidRecipeError, InvalidTargetError
from app.engine.lora import ADAPTER_CONFIG, LoraModule, adapter_from, check_targets, lora_delta
from app.engine.readers.base import Parsed
from app.engine.readers.several import SeveralSources
from app.engine.readers.source import Located
from app.engine.recipe import Recipe

if TYPE_CHECKING:
    import torch

__all__ = ["LORA_RULE", "apply_lora_step"]

LORA_RULE = "lora"


@dataclass
class _Merged:
    """A base tensor read with its module's delta added (or a ``modules_to_save`` value)."""

    base: Located
    factors: tuple[Located, Located] | None = None
    module: LoraModule | None = None
    fan_in_fan_out: bool = False
    dtype: str | None = None  # modules_to_save: the adapter's value, cast to the base's dtype


class _MergedReader:
    """Reads :class:`_Merged` handles; never a byte range (the value is computed)."""

    format = "lora"
    parsed = Parsed(root=None)

    def read(self, handle: _Merged) -> torch.Tensor:
        import torch

        base = handle.base.reader.read(handle.base.handle)
        if handle.dtype is not None:
            return base.to(getattr(torch, handle.dtype))
        if handle.module is None or handle.factors is None:
            return base
        a, b = (f.reader.read(f.handle) for f in handle.factors)
        m = handle.module
        delta = lora_delta(a, b, kind=m.kind, scale=m.scale, fan_in_fan_out=handle.fan_in_fan_out)
        return (base.to(torch.float64) + delta).to(base.dtype)

    def byte_range(self, handle: _Merged) -> None:
        return None

    def storage_id(self, handle: _Merged) -> tuple[str, ...]:
        return ("lora", str(id(handle)))

    def close(self) -> None:
        return None


def _config(recipe: Recipe, adapter_path: Any) -> dict[str, Any]:
    step = recipe.lora
    assert step is not None
    if step.config is not None:
        return dict(step.config)
    folder = Path(adapter_path) if isinstance(adapter_path, str | Path) else None
    if folder is not None and folder.is_file():
        folder = folder.parent
    path = folder / ADAPTER_CONFIG if folder is not None else None
    if path is None or not path.is_file():
        raise InvalidRecipeError(
            f"lora: source {step.merge!r} has no {ADAPTER_CONFIG} beside it; give its content "
            "as `lora.config` (graft submit sends it from the adapter's folder)",
            rule=LORA_RULE,
        )
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def apply_lora_step(src: SeveralSources, recipe: Recipe, paths: Mapping[str, Any]) -> int:
    """Make ``src`` read its base merged with the recipe's adapter.

    Returns:
        The number of modules merged (and tensors replaced by ``modules_to_save``).

    Raises:
        InvalidRecipeError: no adapter config, or the step names a source that is not there.
        InvalidTargetError: a targeted weight missing from the base, or of another shape.
        UnreadableCheckpointError: the adapter is not a plain LoRA (as ``graft lora``).
    """
    step = recipe.lora
    if step is None:
        return 0
    try:
        base_name = recipe.lora_base()
    except ValueError as exc:
        raise InvalidRecipeError(str(exc), rule=LORA_RULE) from None
    factors = src.parts[step.merge]
    header = {k: (tuple(t.shape), t.dtype) for k, t in factors.tensors.items()}
    adapter = adapter_from(
        Path(str(paths.get(step.merge, step.merge))),
        _config(recipe, paths.get(step.merge)),
        header,
        alpha=step.alpha,
        where=f"source {step.merge!r}",
    )
    by_key = {m.base_key: m for m in adapter.modules.values()}
    check_targets(src.parts[base_name], factors, adapter, by_key)
    reader = _MergedReader()
    for m in adapter.modules.values():
        key = _base_key(src, base_name, m.base_key)
        pair = (src.located(f"{step.merge}:{m.a_key}"), src.located(f"{step.merge}:{m.b_key}"))
        merged = _Merged(src.located(key), pair, m, adapter.fan_in_fan_out)
        src.replace(key, Located(reader, merged), LORA_RULE)
    for base_key, saved in adapter.saved.items():
        key = _base_key(src, base_name, base_key)
        value = _Merged(src.located(f"{step.merge}:{saved}"), dtype=src.tensors[key].dtype)
        src.replace(key, Located(reader, value), LORA_RULE)
    src.consume(step.merge)
    return len(adapter.modules) + len(adapter.saved)


def _base_key(src: SeveralSources, base: str, key: str) -> str:
    qualified = f"{base}:{key}"
    if qualified not in src.tensors:
        raise InvalidTargetError(
            f"the base {base!r} has no {key!r}, which the adapter changes: was the adapter "
            "trained on this model?"
        )
    return qualified
