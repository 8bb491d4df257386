"""Verification, in one place: the output re-read against its digests, the strict-load check,
and, for architecture targets, the converted weights run in the model.

Every tensor's digest was taken as its bytes went out. :func:`verify_output` reads the output
back and digests it again, and checks that the whole would load strictly into the target's
layout. :func:`verify_on_model` goes further for architecture targets: the model is
instantiated on the device, the output is loaded with ``strict=True, assign=True``, and a
forward pass on the input the architecture declares must give finite outputs of the declared
shape. When the source is described by an architecture too and the recipe only renamed keys,
both models run on the same input and their outputs must be allclose: the conversion kept the
function, not just the bytes.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.architectures import BoundArchitecture
from app.engine.errors import GraftError
from app.engine.meta import TensorInfo
from app.engine.output.digests import compare_range, digest_range, tensor_digest
from app.engine.output.execution import Execution
from app.engine.output.overlap import resolved
from app.engine.plan import Plan, PlanEntry
from app.engine.progress import Progress, ProgressEvent
from app.engine.readers import Source, open_source
from app.engine.target import Target

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "EQUIVALENCE_ATOL",
    "EQUIVALENCE_RTOL",
    "ModelCheck",
    "OutputCheck",
    "strict_load_check",
    "verify_on_model",
    "verify_output",
]

logger = logging.getLogger(__name__)


# The output against its digests ----------------------------------------------------------


@dataclass
class OutputCheck:
    """What re-reading the output found.

    Attributes:
        checked: fed tensors compared with the digest taken as they were written.
        equal: how many of them matched.
        unequal: the target keys that did not.
        strict_load: whether the whole would load strictly into the target's layout.
        strict_error: why not, when it would not.
        digests: the digests of byte-copied tensors, taken from the written ranges.
        nonfinite: byte-copied tensors holding NaN or Inf.
    """

    checked: int = 0
    equal: int = 0
    unequal: list[str] = field(default_factory=list)
    strict_load: bool | None = None
    strict_error: str | None = None
    digests: dict[str, str] = field(default_factory=dict)
    nonfinite: list[str] = field(default_factory=list)


def verify_output(
    written: Path,
    plan: Plan,
    target: Target,
    execution: Execution,
    progress: Progress | None,
) -> OutputCheck:
    """Re-open what was written; every fed tensor must be the bytes the plan produced (see
    ``_same``), and the whole must load strictly into the target's layout.

    A byte-copied tensor (``execution.copied_from``) is compared with the source ranges it
    was copied from, in the same read that digests it; every other one is compared with the
    digest taken as it was written.

    Args:
        written: the written file or folder (still at its temp path).
        plan: the plan it was written from.
        target: the target whose layout it must fit.
        execution: what writing produced: the digests of produced tensors, and the source
            ranges of byte-copied ones.
        progress: told how far the check is.

    Returns:
        The counts, the keys that differ, and the strict-load outcome.
    """
    check = OutputCheck()
    fed = [e for e in plan.entries if e.fed and e.stored_as is None]
    ties = {e.target: e.stored_as for e in plan.entries if e.stored_as is not None}
    with open_source(written, strip_prefixes="none") as out:
        for i, entry in enumerate(fed):
            check.checked += 1
            if _same(entry, out, execution, check):
                check.equal += 1
            else:
                check.unequal.append(entry.target)
            if progress:
                progress(ProgressEvent("verify", (i + 1) / max(len(fed), 1)))
        tensors = {**out.tensors, **{dup: out.tensors[kept] for dup, kept in ties.items()}}
        check.strict_load, check.strict_error = strict_load_check(target, tensors)
    return check


def _same(entry: PlanEntry, out: Source, execution: Execution, check: OutputCheck) -> bool:
    """Do the written bytes equal the source after its declared ops?

    A byte copy is compared with its source range directly (``memcmp`` of the page cache)
    while the written range is digested: one read of each, one BLAKE3 pass, taken while
    the copy went on (``execution.verified_copies``) when the written header puts the
    tensor where the writer put it, else here. When the writer digested the source ranges
    before the copy, the comparison proves that digest is the written bytes' too. Every other
    tensor's digest was taken from the tensor the declared ops produced, as it was written;
    its written range is digested again and compared, so verification checks what is on
    disk without a second run of the ops (which would only re-check their determinism) and
    without holding a second copy of a large tensor.
    """
    span = out.byte_range(entry.target)
    copied = execution.copied_from.get(entry.target)
    if copied is not None and span is not None:
        early = execution.verified_copies.get(entry.target)
        if (
            early is not None
            and early.digest is not None
            and early.span == (resolved(Path(span[0])), *span[1:])
        ):
            # Checked while the copy went on, at the range the written header names.
            digest, finite, equal = early.digest, early.finite, early.equal
        else:  # (a written range that differs from its source is digested here, as it is)
            digest, finite, equal = compare_range(span, copied, entry.dtype)
        check.digests[entry.target] = digest
        if not finite:
            check.nonfinite.append(entry.target)
        return equal
    expected = execution.digests.get(entry.target)
    if span is None:  # a format whose tensors are not laid out in C order: read them back
        return tensor_digest(out.read(entry.target)) == expected
    return digest_range(*span)[0] == expected


def strict_load_check(target: Target, written: dict[str, TensorInfo]) -> tuple[bool, str | None]:
    """Would ``load_state_dict(strict=True)`` accept ``written`` into the target's layout?

    When torch is already loaded (some tensor was materialised), PyTorch itself answers, on a
    module built from the target's description on the meta device. A byte-copy conversion
    never loads torch; it applies the same rules strict loading does (no missing key, no
    unexpected key, equal shapes) without it.
    """
    if "torch" not in sys.modules:
        missing = [k for k in target.tensors if k not in written]
        unexpected = [k for k in written if k not in target.tensors]
        shapes = [
            k
            for k, i in written.items()
            if k in target.tensors and target.tensors[k].shape != i.shape
        ]
        if missing or unexpected or shapes:
            return (
                False,
                f"missing {missing[:5]}, unexpected {unexpected[:5]}, size mismatch {shapes[:5]}",
            )
        return True, None
    return _torch_strict_load(target, written)


def _torch_strict_load(target: Target, written: dict[str, TensorInfo]) -> tuple[bool, str | None]:
    import torch
    from torch import nn

    root = nn.Module()
    with torch.device("meta"):
        for key, info in target.tensors.items():
            owner, _, leaf = key.rpartition(".")
            module = root
            for part in owner.split(".") if owner else []:
                if part not in module._modules:
                    module.add_module(part, nn.Module())
                child = module._modules[part]
                if child is None:
                    raise GraftError(f"internal error: no module at {part!r} of {key!r}")
                module = child
            empty = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
            if info.kind == "parameter" and (empty.is_floating_point() or empty.is_complex()):
                module.register_parameter(leaf, nn.Parameter(empty, requires_grad=False))
            else:
                module.register_buffer(leaf, empty)
    state = {
        k: torch.empty(i.shape, dtype=getattr(torch, i.dtype), device="meta")
        for k, i in written.items()
    }
    try:
        root.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        return False, str(exc).splitlines()[0][:500]
    return True, None


# The converted weights in the model ------------------------------------------------------

EQUIVALENCE_RTOL = 1e-4
EQUIVALENCE_ATOL = 1e-5
EXAMPLE_BATCH = 2
_HALF = ("float16", "bfloat16")


@dataclass
class ModelCheck:
    """The ``forward`` and ``equivalence`` sections of the report, and what failed.

    A value: :func:`app.engine.report.build_report` puts the sections under ``verification``
    and the failures into ``errors``.
    """

    sections: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


def verify_on_model(
    output: Path,
    target: BoundArchitecture,
    plan: Plan,
    *,
    device: str = "cpu",
    source: Source | None = None,
    source_architecture: BoundArchitecture | None = None,
) -> ModelCheck:
    """Run the converted weights in the target model (and compare with the source model).

    Args:
        output: the written weights (a file, or a folder of shards).
        target: the target architecture with its kwargs.
        plan: the conversion's plan (its entries say whether only renames ran).
        device: where the models are built and run (``cpu``, ``cuda``, ``cuda:1``).
        source: the opened source, for the equivalence check.
        source_architecture: the architecture the source checkpoint belongs to; enables the
            equivalence check when the recipe only renamed keys.

    Returns:
        The outcome; nothing is raised for a model that fails, it is reported.
    """
    import torch

    result = ModelCheck()
    forward: dict[str, Any] = {"architecture": target.name, "device": device}
    result.sections["forward"] = forward
    started = time.perf_counter()
    try:
        model = target.build(device)
        state = _read_all(output, device)
        # A tied duplicate stored once is the same tensor, as transformers' re-tying makes it.
        state |= {e.target: state[e.stored_as] for e in plan.entries if e.stored_as in state}
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
            out, inputs, plan, source, source_architecture, device, result.failures
        )
    return result


def _equivalence(
    expected: torch.Tensor,
    inputs: Any,
    plan: Plan,
    source: Source | None,
    arch: BoundArchitecture,
    device: str,
    failures: list[str],
) -> dict[str, Any]:
    import torch

    section: dict[str, Any] = {"source_architecture": arch.name, "run": False}
    reason = _not_a_pure_rename(plan) if source is not None else "the source was not given"
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


def _not_a_pure_rename(plan: Plan) -> str | None:
    """Why the outputs need not match, or ``None`` when every tensor was only renamed."""
    for entry in plan.entries:
        benign = entry.target.rsplit(".", 1)[-1] == "num_batches_tracked"
        if entry.status != "loaded" and not benign:
            return f"{entry.target} is {entry.status}, not only renamed"
        if entry.ops:
            return f"{entry.target} went through {', '.join(entry.ops)}"
    for unused in plan.unused:
        if not unused.source.endswith("num_batches_tracked"):
            return f"source key {unused.source} is {unused.reason}"
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
