"""Byte copies verified while the next bytes are copied: the copy and its check on two cores.

A byte-copied tensor never enters Python on the way out; verification reads its written
range back, digests it (BLAKE3, unless its digest was taken from the source before the copy:
the comparison then proves the written bytes are the ones digested), scans it for NaN/Inf and
compares it with the source range it came from; the same cache-hot bytes feed the output
file's running sha256 when its header was final before the copy
(:mod:`app.engine.output.file_sha256`). Run after the copy, that read doubles the wall time
on a machine with two cores. Here the writer copies in steps of :data:`STEP` bytes and hands
each copied step to a worker thread through a bounded queue: the worker checks step N (one
read of the written bytes: digest, finiteness, ``memcmp`` with the source, sha256 and, for a
zip record, the CRC-32, all from the same mapped window, chunk by chunk so that each check
after the first reads from cache) while the kernel copies step N+1. BLAKE3, ``memcmp`` (through
ctypes), zlib and numpy's reductions all release the GIL, so both cores work.

Nothing is held but one mapped window of each file (:data:`VERIFY_WINDOW`); the queue holds
ranges, not bytes, so memory stays bounded whatever the model's size.
"""

from __future__ import annotations

import functools
import os
import queue
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from app.engine.output.digests import VERIFY_WINDOW, all_finite, hexdigest, same_bytes, window
from app.engine.output.file_sha256 import HASH_CHUNK, RunningSha256, SourceSha256, read_header
from app.engine.output.files import OutputFile
from app.engine.output.kernel_copy import KernelCopier

__all__ = ["STEP", "CopiedTensor", "CopyRuns", "CopyVerifier", "resolved"]

STEP = 32 << 20  # bytes copied between two hand-overs to the verifier
_DEPTH = 4  # steps the verifier may lag behind the copy before the copy waits


@functools.lru_cache(maxsize=256)
def resolved(path: Path) -> Path:
    """``path`` resolved, once per path (every tensor of a file names the same one, and each
    resolution is a system call per path component)."""
    return Path(path).resolve()


@dataclass
class CopiedTensor:
    """What the verifier found in one byte-copied tensor's written range.

    Attributes:
        span: ``(file, offset, length)`` of the written range (the file resolved).
        digest: ``blake3:<hex>`` of the written bytes: digested here, or the digest the
            writer took of the source ranges when they proved equal; ``None`` when that
            digest was given and the bytes differ (verification digests them itself).
        finite: no NaN or Inf among its values.
        equal: the written bytes equal the source ranges, end to end.
        crc: CRC-32 of the written bytes, when asked for (a zip record's).
    """

    span: tuple[Path, int, int]
    digest: str | None
    finite: bool
    equal: bool
    crc: int | None


@dataclass
class _Open:
    """A tensor being verified: its running digest (or the one taken of its source), checks,
    and the bytes still to come."""

    span: tuple[Path, int, int]
    dtype: str
    hasher: Any
    expected: str | None
    crc: int | None
    left: int
    finite: bool = True
    equal: bool = True


_Segment = tuple[str, int, Path, int, int]  # key, output offset, source file, offset, length


class CopyVerifier:
    """The worker thread that checks copied ranges while the writer copies the next ones.

    Args:
        crc: also take each tensor's CRC-32 from its written bytes (a torch zip's records).
        threads: BLAKE3 threads per update (1: the other core is busy copying).

    Attributes:
        done: each finished tensor's outcome, by key.
        files: the running sha256 of each output file announced with :meth:`header`.
    """

    def __init__(self, *, crc: bool = False, threads: int = 1) -> None:
        self._crc = crc
        self._threads = threads
        self._work: queue.Queue[tuple[Any, ...] | None] = queue.Queue(maxsize=_DEPTH)
        self._open: dict[str, _Open] = {}
        self.done: dict[str, CopiedTensor] = {}
        self.files: dict[Path, RunningSha256] = {}
        self._fds: dict[Path, int] = {}
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="graft-verify", daemon=True)
        self._thread.start()

    def begin(
        self,
        key: str,
        path: Path,
        offset: int,
        length: int,
        dtype: str,
        expected: str | None = None,
    ) -> None:
        """Announce tensor ``key``: ``length`` bytes of ``dtype`` at ``offset`` of ``path``,
        whose segments follow in order. ``expected``: the digest already taken of its source
        ranges (then the written bytes are compared, not digested again)."""
        self._work.put(("begin", key, (resolved(Path(path)), offset, length), dtype, expected))

    def header(self, out: Path, length: int) -> None:
        """Take the running sha256 of ``out``: its first ``length`` bytes (written, final)
        now, then every segment handed over, which must follow on in file order."""
        self._work.put(("header", out, length))

    def written(self, out: Path, offset: int, length: int) -> None:
        """Bytes of ``out`` the writer wrote itself (a zip record's header, the directory):
        read back into its running sha256, in file order with the segments."""
        self._work.put(("written", out, offset, length))

    def segments(self, out: Path, items: list[_Segment]) -> None:
        """Hand over copied segments of the output file ``out`` (blocks while the worker is
        :data:`_DEPTH` steps behind)."""
        if items:
            self._work.put(("check", out, items))

    def finish(self) -> dict[str, CopiedTensor]:
        """Wait for the worker; return every finished tensor's outcome by key.

        Raises:
            BaseException: whatever the worker raised.
        """
        self.close()
        if self._error is not None:
            raise self._error
        return self.done

    def close(self) -> None:
        """Stop the worker and close its files (idempotent)."""
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def _run(self) -> None:
        while (item := self._work.get()) is not None:
            if self._error is not None:
                continue  # keep draining, so the writer never blocks on a dead worker
            try:
                if item[0] == "begin":
                    self._begin(*item[1:])
                elif item[0] == "header":
                    self._header(item[1], item[2])
                elif item[0] == "written":
                    self._written(*item[1:])
                else:
                    for segment in item[2]:
                        self._check(item[1], *segment)
            except BaseException as exc:  # re-raised in the writer by finish()
                self._error = exc

    def _begin(
        self, key: str, span: tuple[Path, int, int], dtype: str, expected: str | None
    ) -> None:
        threads = self._threads if span[2] >= 1 << 20 else 1
        hasher = blake3.blake3(max_threads=threads) if expected is None else None
        state = _Open(span, dtype, hasher, expected, 0 if self._crc else None, span[2])
        self._open[key] = state
        if state.left == 0:
            self._close(key, state)

    def _header(self, out: Path, length: int) -> None:
        self.files[out] = read_header(out, length)

    def _written(self, out: Path, offset: int, length: int) -> None:
        running = self.files.get(out)
        if running is not None:
            running.update(offset, os.pread(self._fd(out), length, offset))

    def _fd(self, path: Path) -> int:
        fd = self._fds.get(path)
        if fd is None:
            fd = self._fds[path] = os.open(path, os.O_RDONLY)
        return fd

    def _check(
        self, out: Path, key: str, out_offset: int, src: Path, src_offset: int, n: int
    ) -> None:
        state = self._open[key]
        running = self.files.get(out)
        out_fd, src_fd = self._fd(out), self._fd(src)
        done = 0
        while done < n:
            size = min(VERIFY_WINDOW, n - done)
            with (
                window(out_fd, out_offset + done, size) as view,
                window(src_fd, src_offset + done, size) as original,
            ):
                # Chunk by chunk, so every check after the first reads the chunk from cache.
                # Chunks are cut at multiples of their size from the tensor's start, as
                # windows are: no value straddles two of them.
                for at in range(0, size, HASH_CHUNK):
                    with view[at : at + HASH_CHUNK] as chunk:
                        if state.equal:
                            with original[at : at + HASH_CHUNK] as same:
                                state.equal = same_bytes(chunk, same)
                        if state.hasher is not None:
                            state.hasher.update(chunk)
                        if state.finite:
                            state.finite = all_finite(chunk, state.dtype)
                        if state.crc is not None:
                            state.crc = zlib.crc32(chunk, state.crc)
                        if running is not None:
                            running.update(out_offset + done + at, chunk)
            done += size
        state.left -= n
        if state.left <= 0:
            self._close(key, state)

    def _close(self, key: str, state: _Open) -> None:
        del self._open[key]
        equal = state.equal and state.left == 0
        if state.hasher is not None:
            digest: str | None = hexdigest(state.hasher)
        else:  # the source's digest is the written bytes' only when they are the same
            digest = state.expected if equal else None
        self.done[key] = CopiedTensor(state.span, digest, state.finite, equal, state.crc)


@dataclass
class _Member:
    key: str | None
    start: int  # offset in the run
    length: int


@dataclass
class CopyRuns:
    """Byte-copied tensors whose source ranges follow each other, copied as one range.

    A safetensors source lays tensors end to end, so a rename-only conversion is a handful
    of ``copy_file_range`` calls; a torch zip puts a record header between tensors, so each
    is its own run. With a :class:`CopyVerifier`, a run is copied in steps of about
    :data:`STEP`, cut at tensor boundaries or whole steps from a tensor's start (so no value
    straddles two windows), and each step is handed to the verifier once copied.

    Attributes:
        copier: the kernel copier (its ``used`` counts the bytes per method).
        verifier: checks the copied steps, or ``None`` (``--no-verify``).
        hasher: without a verifier, takes the output files' sha256 from the source ranges
            beside the copy (see :meth:`hash_file`), or ``None``.
    """

    copier: KernelCopier
    verifier: CopyVerifier | None = None
    hasher: SourceSha256 | None = None
    _fds: dict[Path, int] = field(default_factory=dict)
    _path: Path | None = None
    _start: int = 0
    _end: int = 0
    _members: list[_Member] = field(default_factory=list)

    @property
    def pending(self) -> int:
        """Bytes added and not yet copied."""
        return self._end - self._start

    def hash_file(self, out: OutputFile) -> None:
        """Take ``out``'s sha256 while it is written: call once its final header is written
        and before anything else is; every byte after it must come through this object."""
        if self.verifier is not None:
            self.verifier.header(out.path, out.position)
        elif self.hasher is not None:
            self.hasher.header(out.path, out.position)

    def hash_written(self, out: OutputFile, offset: int) -> None:
        """Hash what the writer wrote into ``out`` itself from ``offset`` to its end, in
        file order with the copies (after :meth:`hash_file`; copies pending are flushed)."""
        self.flush(out)
        if self.verifier is not None:
            self.verifier.written(out.path, offset, out.position - offset)
        elif self.hasher is not None:
            self.hasher.add(out.path, offset, out.path, offset, out.position - offset)

    def file_sha256(self) -> dict[Path, RunningSha256]:
        """The running digests of the files given to :meth:`hash_file` (once finished)."""
        if self.verifier is not None:
            return self.verifier.files
        return self.hasher.finish() if self.hasher is not None else {}

    def add_tensor(
        self,
        out: OutputFile,
        key: str,
        spans: list[tuple[Path, int, int]],
        dtype: str,
        expected: str | None = None,
    ) -> None:
        """Queue tensor ``key``'s source ranges (one, or a DCP tensor's chunks in order);
        ``expected``: the digest already taken of them, for the verifier."""
        if self.verifier is not None:
            length = sum(s[2] for s in spans)
            at = out.position + self.pending
            self.verifier.begin(key, out.path, at, length, dtype, expected)
        for span in spans:
            self.add(out, *span, key=key)

    def add(
        self, out: OutputFile, path: Path, offset: int, length: int, *, key: str | None = None
    ) -> None:
        """Queue one source range (copied with the run it extends, or starting a new one)."""
        if self._path != path or offset != self._end:
            self.flush(out)
            self._path, self._start, self._end = path, offset, offset
        self._members.append(_Member(key, self._end - self._start, length))
        self._end = offset + length

    def flush(self, out: OutputFile) -> None:
        """Copy the pending run (before anything else is appended to ``out``)."""
        if self._path is not None and self._end > self._start:
            fd = self._fds.get(self._path)
            if fd is None:
                fd = self._fds[self._path] = os.open(self._path, os.O_RDONLY)
            if self.verifier is None:
                length = self._end - self._start
                if self.hasher is not None:  # hashed from the source while it is copied
                    self.hasher.add(out.path, out.position, self._path, self._start, length)
                out.copy_from(self.copier, fd, self._start, length)
            else:
                self._copy_in_steps(out, fd, self._path, self.verifier)
        self._path = None
        self._start = self._end = 0
        self._members.clear()

    def _copy_in_steps(self, out: OutputFile, fd: int, src: Path, verifier: CopyVerifier) -> None:
        base, copied = out.position, 0  # the run's offset in the output; bytes copied of it
        pending: list[_Segment] = []
        for m in self._members:
            done = 0
            while done < m.length:
                n = min(STEP, m.length - done)
                if m.key is not None:
                    at = m.start + done
                    pending.append((m.key, base + at, src, self._start + at, n))
                done += n
                end = m.start + done
                if end - copied >= STEP:
                    out.copy_from(self.copier, fd, self._start + copied, end - copied)
                    copied = end
                    verifier.segments(out.path, pending)
                    pending = []
        if copied < self._end - self._start:
            out.copy_from(self.copier, fd, self._start + copied, self._end - self._start - copied)
        verifier.segments(out.path, pending)

    def close(self) -> None:
        """Close the source files (and stop the hasher, if it still runs)."""
        if self.hasher is not None:
            self.hasher.close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
