"""Carry out a plan: produce each target tensor in turn, stream it to the output, verify.

Memory stays bounded by the largest tensor for safetensors output: the header is known from
the plan, so it is written first and each tensor's bytes follow in order, then freed. The
output appears atomically (temp file, fsync, rename, fsync of the folder); on any failure the
temp file is removed and nothing is left at the output path.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

from app.engine.adapt import apply_adapt, cast
from app.engine.checkpoint import SAFETENSORS_DTYPES, Source, open_source
from app.engine.errors import GraftError
from app.engine.initialize import key_generator, sample
from app.engine.meta import is_floating
from app.engine.plan import Plan, PlanEntry
from app.engine.target import Target

if TYPE_CHECKING:
    import torch

__all__ = ["Execution", "OutputFormat", "atomic_output", "execute_plan", "produce", "tensor_sha256"]

logger = logging.getLogger(__name__)

OutputFormat = Literal["safetensors", "torch"]
Progress = Callable[[str, float], None]
_ST_CODES = {v: k for k, v in SAFETENSORS_DTYPES.items()}
DIGEST_PLACEHOLDER = "0" * 64


@dataclass
class Execution:
    """What writing produced: per-key digests, warnings and the verification outcome."""

    digests: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    checked: int = 0
    equal: int = 0
    unequal: list[str] = field(default_factory=list)
    strict_load: bool | None = None
    strict_error: str | None = None


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    import torch

    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().data


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes in C order (what the output file holds)."""
    return hashlib.sha256(_tensor_bytes(t)).hexdigest()


def produce(
    entry: PlanEntry, source: Source, target: Target, *, seed: int, device: str = "cpu"
) -> torch.Tensor:
    """The value of one target key, as the plan declares it, on the CPU."""
    import torch

    if entry.status == "kept":
        value = target.read(entry.target)
    elif entry.status == "initialized":
        assert entry.init is not None  # the plan sets it with the status
        gen = key_generator(entry.init.seed, entry.target)
        if not is_floating(entry.dtype) and entry.init.fn not in ("zeros", "ones"):
            raise GraftError(
                f"{entry.target}: cannot initialise {entry.dtype} with {entry.init.fn}"
            )
        if entry.init.fn in ("zeros", "ones") and not is_floating(entry.dtype):
            value = getattr(torch, entry.init.fn)(entry.shape, dtype=getattr(torch, entry.dtype))
        else:
            value = sample(entry.init.fn, entry.init.args, entry.shape, generator=gen)
    elif entry.fed:
        value = source.read(entry.sources[0])
        if entry.adapt is not None:
            rule = entry.adapt
            value, _ = apply_adapt(
                rule.op,
                value.to(device),
                entry.shape,
                fill=getattr(rule, "fill", None),
                prefix_tokens=getattr(rule, "prefix_tokens", 1),
                mode=getattr(rule, "mode", "bicubic"),
                generator=key_generator(seed, entry.target),
                key=entry.target,
                module=entry.module,
            )
    else:
        raise GraftError(f"{entry.target} has no value (status {entry.status})")
    if is_floating(str(value.dtype).removeprefix("torch.")) and is_floating(entry.dtype):
        value, _ = cast(value, entry.dtype, key=entry.target)
    return value.to("cpu")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync and rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.graft-tmp-{os.getpid()}")
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        with suppress(FileNotFoundError):
            tmp.unlink()


def _header(entries: list[PlanEntry], metadata: dict[str, str]) -> bytes:
    header: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        size = _nbytes(e)
        header[e.target] = {
            "dtype": _ST_CODES[e.dtype],
            "shape": list(e.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    return raw + b" " * (-len(raw) % 8)


def _nbytes(e: PlanEntry) -> int:
    from app.engine.meta import DTYPE_SIZES

    n = DTYPE_SIZES[e.dtype]
    for s in e.shape:
        n *= s
    return n


def _write_all(f: BinaryIO, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        view = view[n:]


def execute_plan(
    plan: Plan,
    source: Source,
    target: Target,
    output: Path,
    *,
    fmt: OutputFormat,
    seed: int,
    metadata: dict[str, str],
    finalize_metadata: Callable[[Execution], dict[str, str]],
    device: str = "cpu",
    progress: Progress | None = None,
) -> Execution:
    """Write every target tensor to ``output`` atomically, then verify it.

    Args:
        plan: an ok plan.
        source: the opened source.
        target: the target.
        output: where the converted weights go.
        fmt: ``safetensors`` (streamed, bounded memory) or ``torch`` (``torch.save`` of a dict).
        seed: the recipe seed (adapt ops with random fills derive per-key generators from it).
        metadata: safetensors ``__metadata__`` to write; ``graft.report_sha256`` must hold
            :data:`DIGEST_PLACEHOLDER` and is filled by ``finalize_metadata`` at the end.
        finalize_metadata: returns the final metadata once digests are known (same lengths).
        device: where adapt ops run (``cpu``, ``cuda``, ``cuda:1``); outputs come from the CPU.
        progress: called with (stage, fraction).
    """
    import torch

    result = Execution()
    total = max(len(plan.entries), 1)
    with atomic_output(output) as tmp:
        if fmt == "safetensors":
            header = _header(plan.entries, metadata)
            with tmp.open("wb") as f:
                _write_all(f, struct.pack("<Q", len(header)) + header)
                for i, entry in enumerate(plan.entries):
                    value = produce(entry, source, target, seed=seed, device=device)
                    _check_value(entry, value, result)
                    data = _tensor_bytes(value)
                    result.digests[entry.target] = hashlib.sha256(data).hexdigest()
                    _write_all(f, data)
                    del value, data
                    if progress:
                        progress("write", (i + 1) / total)
                final = _header(plan.entries, finalize_metadata(result))
                if len(final) != len(header):
                    raise GraftError("internal error: output header changed size while finalising")
                f.seek(8)
                _write_all(f, final)
        else:
            tensors: dict[str, torch.Tensor] = {}
            for i, entry in enumerate(plan.entries):
                value = produce(entry, source, target, seed=seed, device=device)
                _check_value(entry, value, result)
                result.digests[entry.target] = tensor_sha256(value)
                tensors[entry.target] = value
                if progress:
                    progress("write", (i + 1) / total)
            finalize_metadata(result)
            torch.save(tensors, tmp)
        _verify(plan, source, target, tmp, result, seed=seed, device=device, progress=progress)
    return result


def _check_value(entry: PlanEntry, value: torch.Tensor, result: Execution) -> None:
    import torch

    if tuple(value.shape) != entry.shape or str(value.dtype).removeprefix("torch.") != entry.dtype:
        raise GraftError(
            f"internal error: {entry.target} came out as {list(value.shape)} {value.dtype}, "
            f"planned {list(entry.shape)} {entry.dtype}"
        )
    if value.is_floating_point() and not bool(torch.isfinite(value).all()):
        result.warnings.append(f"nan_or_inf: {entry.target}")


def _verify(
    plan: Plan,
    source: Source,
    target: Target,
    written: Path,
    result: Execution,
    *,
    seed: int,
    device: str,
    progress: Progress | None,
) -> None:
    """Re-open what was written; every fed tensor must equal the source after its ops."""

    fed = [e for e in plan.entries if e.fed]
    with open_source(written, strip_prefixes="none") as out:
        for i, entry in enumerate(fed):
            expected = produce(entry, source, target, seed=seed, device=device)
            actual = out.read(entry.target)
            result.checked += 1
            if _same_bits(actual, expected):
                result.equal += 1
            else:
                result.unequal.append(entry.target)
            if progress:
                progress("verify", (i + 1) / max(len(fed), 1))
        result.strict_load, result.strict_error = strict_load_check(target, out)


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact equality of dtype, shape and bytes: a NaN carried over equals itself."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return torch.equal(_bits(a), _bits(b))


def _bits(t: torch.Tensor) -> torch.Tensor:
    import torch

    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)


def strict_load_check(target: Target, out: Source) -> tuple[bool, str | None]:
    """``load_state_dict(strict=True)`` of the output's keys and shapes into a module built
    from the target's description, on the meta device (PyTorch's own check, no data)."""
    import torch
    from torch import nn

    root = nn.Module()
    with torch.device("meta"):
        for key, info in target.tensors.items():
            owner, _, leaf = key.rpartition(".")
            module = root
            for part in owner.split(".") if owner else []:
                child = getattr(module, part, None) if part in module._modules else None
                if child is None:
                    child = nn.Module()
                    module.add_module(part, child)
                module = child
            empty = torch.empty(info.shape, dtype=getattr(torch, info.dtype))
            if info.kind == "parameter" and (empty.is_floating_point() or empty.is_complex()):
                module.register_parameter(leaf, nn.Parameter(empty, requires_grad=False))
            else:
                module.register_buffer(leaf, empty)
    state = {
        k: torch.empty(i.shape, dtype=getattr(torch, i.dtype), device="meta")
        for k, i in out.tensors.items()
    }
    try:
        root.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        return False, str(exc).splitlines()[0][:500]
    return True, None
