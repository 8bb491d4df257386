"""Carry out a plan: write every target tensor to the output atomically, then verify it.

The writers live in :mod:`app.engine.output`; this module picks one from the options, runs the
output check of :mod:`app.engine.verify` while the output is still at its temp path, and only
then lets it appear at the output path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from app.engine.errors import GraftError
from app.engine.options import WriteOptions
from app.engine.output.dcp_writer import write_dcp
from app.engine.output.execution import Execution
from app.engine.output.files import atomic_output
from app.engine.output.safetensors_writer import finalize_safetensors, write_safetensors
from app.engine.output.streamed import StreamedOutput, write_streamed
from app.engine.output.torch_writer import write_torch
from app.engine.output.up_front import up_front
from app.engine.plan import Plan
from app.engine.produce import Producer
from app.engine.progress import Progress
from app.engine.rederive import rederive_all
from app.engine.verify import verify_output
from app.engine.warning import Warning

__all__ = ["Stamp", "execute_plan", "execute_streamed"]


@dataclass(frozen=True)
class Stamp:
    """The safetensors ``__metadata__``, written before the data and completed after it.

    Attributes:
        placeholder: the metadata with :data:`~app.engine.output.DIGEST_PLACEHOLDER` where
            digests go (the final values have the same lengths).
        finalize: the final metadata, once the execution's digests are known.
    """

    placeholder: dict[str, str]
    finalize: Callable[[Execution], dict[str, str]]


def execute_plan(
    plan: Plan,
    producer: Producer,
    output: Path,
    *,
    options: WriteOptions,
    stamp: Stamp,
    progress: Progress | None = None,
    beside: Mapping[str, bytes] | None = None,
) -> Execution:
    """Write every target tensor to ``output`` atomically, then verify it.

    Args:
        plan: an ok plan.
        producer: the source, target, seed and device that produce each tensor.
        output: the output file, or the output folder when ``options.folder`` or
            ``options.max_shard_size`` is set.
        options: the format (both are streamed in bounded memory, unchanged tensors copied
            in the kernel), sharding, byte copy, and whether to verify.
        stamp: the safetensors metadata (the torch format carries none).
        progress: called with a ``ProgressEvent``.
        beside: files written next to the weights in a folder output (``config.json``), by
            name; they appear with the weights, atomically.

    Returns:
        The digests, counts, warnings, file names and the output check.

    Raises:
        GraftError: ``max_shard_size`` with the torch format, or a write that failed (the
            output path is then left as it was).
    """
    if options.format != "safetensors" and options.max_shard_size is not None:
        raise GraftError("max_shard_size applies to safetensors output only")
    if options.format == "dcp":  # a folder: .metadata and one writer's .distcp
        with atomic_output(output, folder=True) as tmp:
            result = write_dcp(tmp, plan, producer, progress)
            if options.verify:
                _verify(tmp, plan, producer, result, progress)
        return result
    if options.format == "torch":
        if options.folder:
            raise GraftError("folder applies to safetensors output only")
        with atomic_output(output) as tmp:
            result = write_torch(tmp, plan, producer, options, progress)
            if options.verify:
                _verify(tmp, plan, producer, result, progress)
        result.files = [Path(output).name]
        result.file_sha256 = _published(result.file_sha256, Path(output), False)
        return result
    folder = options.folder or options.max_shard_size is not None
    # Only byte copies: their digests are taken from the source first, so the metadata is
    # final before the data and each file's sha256 is taken as it is written.
    upfront = up_front(plan, producer, options) if options.byte_copy else None
    metadata = stamp.placeholder
    if upfront is not None:
        metadata = stamp.finalize(Execution(format="safetensors", digests=upfront.digests))
    with atomic_output(output, folder=folder) as tmp:
        result, layout = write_safetensors(
            tmp, plan, producer, options, metadata, progress, upfront
        )
        # Verification reads tensor bytes only, so it runs before the headers get their final
        # metadata: it overlaps with the source's sha256, which that metadata waits for.
        if options.verify:
            _verify(tmp, plan, producer, result, progress)
        for path in finalize_safetensors(tmp, layout, stamp.finalize(result)):
            result.file_sha256.pop(path, None)  # taken before its header was rewritten
        for name, data in (beside or {}).items() if folder else ():
            (tmp / name).write_bytes(data)
            result.files.append(name)
    if not folder:
        result.files = [Path(output).name]  # the final name, never the temp file's
    result.file_sha256 = _published(result.file_sha256, Path(output), folder)
    return result


def execute_streamed(
    plan: Plan,
    producer: Producer,
    output: StreamedOutput,
    *,
    options: WriteOptions,
    stamp: Stamp,
    progress: Progress | None = None,
) -> Execution:
    """Stream every target tensor into ``output``'s parts, one safetensors file, checking the
    bytes as they go (see :mod:`app.engine.output.streamed`).

    Raises:
        GraftError: options a streamed output cannot honour (another format, a folder,
            shards); the caller writes a local file for those.
    """
    if options.format != "safetensors" or options.folder or options.max_shard_size is not None:
        raise GraftError("a streamed output is one safetensors file (no folder, no shards)")
    return write_streamed(
        plan, producer, output, options=options, metadata=stamp.placeholder,
        finalize=stamp.finalize, progress=progress,
    )  # fmt: skip


def _published(digests: dict[Path, str], output: Path, folder: bool) -> dict[Path, str]:
    """Files' digests by their published paths (the temp file or folder was renamed)."""
    if folder:
        return {output / path.name: digest for path, digest in digests.items()}
    return {output: next(iter(digests.values()))} if digests else {}


def _verify(
    written: Path, plan: Plan, producer: Producer, result: Execution, progress: Progress | None
) -> None:
    """Re-read the output; byte-copied tensors get their digests and NaN check here."""
    check = verify_output(written, plan, producer.target, result, progress)
    result.digests.update(check.digests)
    result.warnings += [Warning(kind="nan_or_inf", message=key) for key in check.nonfinite]
    result.check = check
    # What was not copied is rebuilt from the source by independent checks, not only
    # re-digested (a wrong op would otherwise verify against its own output).
    copied = set(result.copied_from)
    result.rederived = rederive_all(written, plan, producer.source, producer.target, copied)
