"""Verification on the model: prove a conversion into an architecture by running it.

Tensor-level verification (``execute``) shows every written tensor is what the plan said.
This goes further for architecture targets: the model is instantiated on the device, the
output is loaded with ``strict=True, assign=True``, and a forward pass on the input the
architecture declares must give finite outputs of the declared shape. When the source is
described by an architecture too and the recipe only renamed keys, both models run on the same
input and their outputs must be allclose: the conversion kept the function, not just the bytes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.architectures import BoundArchitecture
from app.engine.checkpoint import Source, open_source

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["EQUIVALENCE_ATOL", "EQUIVALENCE_RTOL", "ModelVerification", "verify_on_model"]

logger = logging.getLogger(__name__)

EQUIVALENCE_RTOL = 1e-4
EQUIVALENCE_ATOL = 1e-5
EXAMPLE_BATCH = 2
_HALF = ("float16", "bfloat16")


class ModelVerification:
    """The ``forward`` and ``equivalence`` sections of the report, and what failed."""

    def __init__(self) -> None:
        self.sections: dict[str, Any] = {}
        self.failures: list[str] = []

    def apply(self, report: dict[str, Any]) -> None:
        """Merge into ``report``: sections under ``verification``, failures into ``errors``."""
        verification = report.get("verification") or {}
        verification.update(self.sections)
        report["verification"] = verification
        if self.failures:
            report["ok"] = False
            report["errors"] = [*report.get("errors", []), *self.failures]


def verify_on_model(
    output: Path,
    target: BoundArchitecture,
    report: Mapping[str, Any],
    *,
    device: str = "cpu",
    source: Source | None = None,
    source_architecture: BoundArchitecture | None = None,
) -> ModelVerification:
    """Run the converted weights in the target model (and compare with the source model).

    Args:
        output: the written weights (a file, or a folder of shards).
        target: the target architecture with its kwargs.
        report: the conversion's report (its entries say whether only renames ran).
        device: where the models are built and run (``cpu``, ``cuda``, ``cuda:1``).
        source: the opened source, for the equivalence check.
        source_architecture: the architecture the source checkpoint belongs to; enables the
            equivalence check when the recipe only renamed keys.

    Returns:
        The outcome; nothing is raised for a model that fails, it is reported.
    """
    import torch

    result = ModelVerification()
    forward: dict[str, Any] = {"architecture": target.name, "device": device}
    result.sections["forward"] = forward
    started = time.perf_counter()
    try:
        model = target.build(device)
        state = _read_all(output, device)
        compute_dtype = _load(model, state)
    except Exception as exc:  # the model is user code: whatever it raises is a finding
        forward.update(ok=False, strict_load=False, error=_one_line(exc))
        result.failures.append(f"verification: the output does not load into {target.name}")
        return result
    forward["strict_load"] = True
    if compute_dtype is not None:
        forward["compute_dtype"] = compute_dtype
    example = target.example(model, EXAMPLE_BATCH)
    if example is None:
        forward.update(ok=None, skipped="the architecture declares no example input")
        return result
    inputs, expected = example
    try:
        with torch.inference_mode():
            out = _run(model, inputs, device)
    except Exception as exc:
        forward.update(ok=False, error=_one_line(exc))
        result.failures.append(f"verification: the forward pass of {target.name} failed")
        return result
    finite = bool(torch.isfinite(out).all().item())
    shape_ok = tuple(out.shape) == tuple(expected)
    forward.update(
        ok=finite and shape_ok,
        input_shape=_shapes(inputs),
        output_shape=list(out.shape),
        expected_shape=list(expected),
        finite=finite,
        seconds=round(time.perf_counter() - started, 3),
    )
    if not shape_ok:
        result.failures.append(
            f"verification: {target.name} returned shape {list(out.shape)}, "
            f"declared {list(expected)}"
        )
    if not finite:
        result.failures.append(f"verification: {target.name} returned NaN or Inf")
    if source_architecture is not None:
        result.sections["equivalence"] = _equivalence(
            out, inputs, report, source, source_architecture, device, result.failures
        )
    return result


def _equivalence(
    expected: torch.Tensor,
    inputs: Any,
    report: Mapping[str, Any],
    source: Source | None,
    arch: BoundArchitecture,
    device: str,
    failures: list[str],
) -> dict[str, Any]:
    import torch

    section: dict[str, Any] = {"source_architecture": arch.name, "run": False}
    reason = _not_a_pure_rename(report) if source is not None else "the source was not given"
    if reason is not None or source is None:
        section["reason"] = reason
        return section
    section["run"] = True
    try:
        model = arch.build(device)
        state = {k: source.read(k).to(device) for k in source.tensors}
        _load(model, state)
        with torch.inference_mode():
            got = _run(model, inputs, device)
    except Exception as exc:
        section.update(ok=False, error=_one_line(exc))
        failures.append(f"verification: the source model {arch.name} could not be run")
        return section
    same_shape = got.shape == expected.shape
    diff = (got.float() - expected.float()).abs().max().item() if same_shape else math.inf
    close = same_shape and torch.allclose(
        got.float(), expected.float(), rtol=EQUIVALENCE_RTOL, atol=EQUIVALENCE_ATOL
    )
    section.update(
        ok=close,
        max_abs_diff=diff if math.isfinite(diff) else None,
        rtol=EQUIVALENCE_RTOL,
        atol=EQUIVALENCE_ATOL,
    )
    if not close:
        failures.append(
            f"verification: {arch.name} (source) and the converted model disagree "
            f"(max |diff| {diff:.3g})"
        )
    return section


def _not_a_pure_rename(report: Mapping[str, Any]) -> str | None:
    """Why the outputs need not match, or ``None`` when every tensor was only renamed."""
    for entry in report.get("entries", []):
        benign = entry["target"].rsplit(".", 1)[-1] == "num_batches_tracked"
        if entry["status"] != "loaded" and not benign:
            return f"{entry['target']} is {entry['status']}, not only renamed"
        if entry.get("ops"):
            return f"{entry['target']} went through {', '.join(entry['ops'])}"
    for unused in report.get("unused", []):
        if not unused["source"].endswith("num_batches_tracked"):
            return f"source key {unused['source']} is {unused['reason']}"
    return None


def _read_all(path: Path, device: str) -> dict[str, torch.Tensor]:
    with open_source(path, strip_prefixes="none") as written:
        return {k: written.read(k).to(device) for k in written.tensors}


def _load(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Strict load with ``assign=True`` (the model takes the loaded tensors as they are).

    Half-precision weights on the CPU are computed in float32: several CPU kernels have no
    half variant, and the check is about the weights, not the kernels. Returns the compute
    dtype when it differs from the stored one.
    """
    import torch

    model.load_state_dict(state, strict=True, assign=True)
    model.eval()
    dtypes = {str(p.dtype).removeprefix("torch.") for p in model.parameters()}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if device.type == "cpu" and dtypes & set(_HALF):
        model.float()
        return "float32"
    return None


def _run(model: nn.Module, inputs: Any, device: str) -> torch.Tensor:
    import torch

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)

    def move(t: torch.Tensor) -> torch.Tensor:
        t = t.to(device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    if isinstance(inputs, Mapping):
        out = model(**{k: move(v) for k, v in inputs.items()})
    elif isinstance(inputs, tuple | list):
        out = model(*(move(v) for v in inputs))
    else:
        out = model(move(inputs))
    if isinstance(out, tuple | list):  # (logits, aux) styles: the first is the prediction
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"the forward pass returned {type(out).__name__}, not a tensor")
    return out.detach()


def _shapes(inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return {k: list(v.shape) for k, v in inputs.items()}
    if isinstance(inputs, tuple | list):
        return [list(v.shape) for v in inputs]
    return list(inputs.shape)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:500] if text else ''}"
