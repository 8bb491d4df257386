"""Streaming upload reception: the body goes straight to staged files, hashed on the way.

Multipart (``-F file=@x.pth``, several ``file`` parts for a sharded set) and raw bodies
(``--data-binary @x.pth`` with ``?filename=``) are both parsed incrementally; the body is
never held in memory and never copied twice. The size cap is checked against
``Content-Length`` before reading and against the bytes actually received while reading; a
client that stops sending for ``idle_timeout`` seconds gets 408 (a slow-loris upload holds one
coroutine and one temp file, never a thread or an inspection process), and once a grace
period is over the average rate must stay above a floor, so a trickle is refused too.
:class:`UploadSlots` caps how many uploads are received at once, per owner and in all (429).
A client's file name is checked (a relative path in its set, without ``..``, of at most 255
bytes in UTF-8: :mod:`app.services.set_names`) and kept as the checkpoint's file name only:
staged files are named ``part-<n>``, and stored blobs are addressed by sha256.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.config import Settings
from app.services.errors import (
    BadRequestError,
    TooManyUploadsError,
    UploadTimeoutError,
    UploadTooLargeError,
)
from app.services.set_names import SetNames, set_member_name
from app.storage import StagedFile

__all__ = ["UploadPace", "UploadSlots", "receive_upload", "safe_filename"]

# Bytes handed to the writer thread at a time: one hop per 8 MiB, not per chunk (~1 MiB).
_FLUSH_BYTES = 8 << 20
# Slack for multipart framing when judging Content-Length against the cap.
_MULTIPART_OVERHEAD = 64 * 1024
_RETRY_AFTER_SECONDS = 5
# A safetensors header up to this size is collected to be inspected while the body arrives.
_SNIFF_MAX = 16 << 20

OnHeader = Callable[[bytes, int, str], None]  # header bytes, announced size, file name


def safe_filename(name: str | None, default: str = "checkpoint") -> str:
    """The name a client gave a file, checked: a relative path in its set, normalised
    (``mp_rank_00_000/model_optim_rng.pt``); refuse ``..``, absolute paths, backslashes
    and odd characters (400)."""
    if not name:
        return default
    return set_member_name(name)


class UploadSlots:
    """How many uploads are being received, in all and per owner; beyond a cap, 429.

    Args:
        total: most uploads received at once.
        per_owner: most one owner may send at once.
    """

    def __init__(self, *, total: int, per_owner: int) -> None:
        self.total = total
        self.per_owner = per_owner
        self._by_owner: Counter[str] = Counter()

    @property
    def active(self) -> int:
        return sum(self._by_owner.values())

    @contextlib.contextmanager
    def claim(self, owner: str) -> Iterator[None]:
        """Hold a slot while the body is received (one event loop: no lock needed).

        Raises:
            TooManyUploadsError: a cap is reached (429 with ``Retry-After``).
        """
        if self._by_owner[owner] >= self.per_owner:
            raise TooManyUploadsError(
                f"{self.per_owner} uploads of yours are already in progress "
                "(GRAFT_MAX_UPLOADS_PER_OWNER); retry when one has finished",
                headers={"Retry-After": str(_RETRY_AFTER_SECONDS)},
            )
        if self.active >= self.total:
            raise TooManyUploadsError(
                f"the service is receiving {self.total} uploads already (GRAFT_MAX_UPLOADS); "
                "retry shortly",
                headers={"Retry-After": str(_RETRY_AFTER_SECONDS)},
            )
        self._by_owner[owner] += 1
        try:
            yield
        finally:
            self._by_owner[owner] -= 1
            if not self._by_owner[owner]:
                del self._by_owner[owner]


@dataclass(frozen=True)
class UploadPace:
    """How slow a request body may be: uploads, and every other body (``BodyDeadline``).

    Attributes:
        idle_timeout: seconds without a chunk before the upload is abandoned (None: wait).
        min_rate: bytes per second the average must reach once ``grace`` is over (0: none).
        grace: seconds before the rate counts (a connection's slow start, a proxy's buffer).
    """

    idle_timeout: float | None = None
    min_rate: float = 0.0
    grace: float = 10.0

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadPace:
        return cls(
            idle_timeout=settings.upload_idle_timeout_seconds,
            min_rate=settings.upload_min_bytes_per_second,
            grace=settings.upload_rate_grace_seconds,
        )

    def wait(self, elapsed: float, received: int) -> float | None:
        """How long to wait for the next chunk, ``elapsed`` seconds and ``received`` bytes
        into the body (None: for ever)."""
        wait = self.idle_timeout
        if self.min_rate > 0:
            # The moment the average would fall under the floor if nothing more arrived.
            due = max(self.grace, received / self.min_rate) - elapsed
            wait = max(due, 0.001) if wait is None else min(wait, max(due, 0.001))
        return wait

    def refusal(self, elapsed: float, received: int, waited: float | None) -> UploadTimeoutError:
        """The 408 for a body whose wait of ``waited`` seconds ran out."""
        if self.idle_timeout is not None and waited == self.idle_timeout:
            return UploadTimeoutError(
                f"no data received for {self.idle_timeout:g} s; the request body was abandoned"
            )
        return UploadTimeoutError(
            f"the request body averaged {received / max(elapsed, 0.001):.0f} bytes/s after "
            f"{elapsed:.0f} s; at least {self.min_rate:.0f} are needed "
            "(GRAFT_UPLOAD_MIN_BYTES_PER_SECOND)"
        )


def _too_large(limit: int) -> UploadTooLargeError:
    return UploadTooLargeError(
        f"the upload exceeds GRAFT_MAX_UPLOAD_BYTES ({limit} bytes)", limit=limit
    )


@dataclass
class _Part:
    name: str | None = None
    filename: str | None = None
    staged: StagedFile | None = None


class _Receiver:
    """Turns body chunks into staged files inside ``workdir``."""

    def __init__(self, workdir: Path, limit: int) -> None:
        self.workdir = workdir
        self.limit = limit
        self.received = 0
        self.files: list[StagedFile] = []
        self._names = SetNames()

    def open(self, filename: str) -> StagedFile:
        self._names.add(filename)
        staged = StagedFile(self.workdir / f"part-{len(self.files)}", name=filename)
        self.files.append(staged)
        return staged

    def count(self, n: int) -> None:
        self.received += n
        if self.received > self.limit:
            raise _too_large(self.limit)


async def _chunks(request: Request, pace: UploadPace) -> AsyncIterator[bytes]:
    """The body's chunks; raise UploadTimeoutError when none arrives for the idle timeout, or
    when, past the grace period, the average rate falls under the floor."""
    stream = request.stream().__aiter__()
    started = time.monotonic()
    received = 0
    while True:
        wait = pace.wait(time.monotonic() - started, received)
        try:
            # ``timeout`` arms one timer; ``wait_for`` made a task per chunk (9 us against 4).
            async with asyncio.timeout(wait):
                chunk = await anext(stream)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise pace.refusal(time.monotonic() - started, received, wait) from None
        received += len(chunk)
        yield chunk


class _Pipe:
    """Writes and hashes a staged file on a worker thread while the loop keeps receiving.

    One batch is in flight at a time: the loop collects the next chunks while the thread
    writes (one ``writev``, no join) and hashes the last ones (``hashlib`` and ``writev``
    release the GIL), so receiving, hashing and writing overlap instead of taking turns.
    """

    def __init__(self, staged: StagedFile) -> None:
        self.staged = staged
        self.chunks: list[bytes | memoryview] = []
        self.size = 0
        self._pending: asyncio.Future[None] | None = None

    async def add(self, data: bytes | memoryview) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size >= _FLUSH_BYTES:
            await self.flush()

    async def flush(self) -> None:
        """Hand the collected chunks to the thread (after the previous batch is written)."""
        await self.drain()
        if self.chunks:
            batch, self.chunks, self.size = self.chunks, [], 0
            loop = asyncio.get_running_loop()
            self._pending = loop.run_in_executor(None, self.staged.write_many, batch)

    async def drain(self) -> None:
        """Wait for the batch in flight."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            await pending

    async def settle(self) -> None:
        """Wait for the batch in flight, whatever it raises: the upload already failed, and
        the file must not be discarded under the thread still writing it."""
        with contextlib.suppress(Exception):
            await self.drain()


class _HeaderSniffer:
    """Collects a raw body's first ``8 + N`` bytes, where a safetensors file's header ends
    (``N``: the little-endian u64 it starts with), and hands them on; only the length is
    read here, the header itself is the sandbox's to parse."""

    def __init__(self, total: int, filename: str, on_header: OnHeader) -> None:
        self.total = total
        self.filename = filename
        self.on_header = on_header
        self.head = bytearray()

    def feed(self, chunk: bytes) -> bool:
        """Take a chunk; ``True`` once done (handed on, or not a header worth waiting for)."""
        self.head += chunk[: _SNIFF_MAX + 8 - len(self.head)]
        if len(self.head) < 8:
            return False
        end = 8 + int.from_bytes(self.head[:8], "little")
        if end > min(self.total, _SNIFF_MAX + 8) or end <= 8:
            return True  # not safetensors, or a header too large to hold here
        if len(self.head) < end:
            return False
        self.on_header(bytes(self.head[:end]), self.total, self.filename)
        return True


async def _receive_raw(
    request: Request,
    receiver: _Receiver,
    filename: str,
    pace: UploadPace,
    on_header: OnHeader | None = None,
) -> None:
    pipe = _Pipe(receiver.open(filename))
    declared = request.headers.get("content-length", "")
    sniff = (
        _HeaderSniffer(int(declared), filename, on_header)
        if on_header is not None and declared.isdigit()
        else None
    )
    try:
        async for chunk in _chunks(request, pace):
            receiver.count(len(chunk))
            if sniff is not None and sniff.feed(chunk):
                sniff = None
            await pipe.add(chunk)
        await pipe.flush()
    except BaseException:
        await pipe.settle()
        raise
    await pipe.drain()


def _multipart_parser(
    boundary: bytes, events: list[tuple[str, bytes | memoryview]]
) -> MultipartParser:
    """Build a parser whose callbacks only record `(kind, data)` events.

    Args:
        boundary: The multipart boundary from the Content-Type header.
        events: The list the callbacks append to: `begin` (with the part's
            Content-Disposition), `data` and `end`.

    Returns:
        The parser, ready to be written to.
    """
    header: dict[str, bytes] = {"field": b"", "value": b""}
    headers: dict[bytes, bytes] = {}

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        headers[header["field"].lower()] = header["value"]
        header["field"], header["value"] = b"", b""

    def on_headers_finished() -> None:
        events.append(("begin", headers.get(b"content-disposition", b"")))
        headers.clear()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        # A view, not a copy, of immutable bytes: written and hashed as they are.
        view = memoryview(data)[start:end] if isinstance(data, bytes) else bytes(data[start:end])
        events.append(("data", view))

    def on_part_end() -> None:
        events.append(("end", b""))

    return MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )


async def _receive_multipart(
    request: Request, receiver: _Receiver, boundary: bytes, pace: UploadPace
) -> None:
    # The parser's callbacks are synchronous: they only record; the loop below does the I/O.
    events: list[tuple[str, bytes | memoryview]] = []
    parser = _multipart_parser(boundary, events)
    part = _Part()
    pipe: _Pipe | None = None
    body = 0
    try:
        async for chunk in _chunks(request, pace):
            body += len(chunk)
            if body > receiver.limit + _MULTIPART_OVERHEAD:
                raise _too_large(receiver.limit)
            try:
                parser.write(chunk)
            except MultipartParseError as exc:
                raise BadRequestError(f"malformed multipart body: {exc}") from None
            for kind, data in events:
                if kind == "begin":
                    _, options = parse_options_header(bytes(data))
                    part = _Part(
                        name=options.get(b"name", b"").decode("utf-8", "replace"),
                        filename=options.get(b"filename", b"").decode("utf-8", "replace") or None,
                    )
                    if part.name != "file":
                        raise BadRequestError(
                            f"unexpected form field {part.name!r}: send files as `file` parts"
                        )
                    part.staged = receiver.open(safe_filename(part.filename))
                    pipe = _Pipe(part.staged)
                elif kind == "data" and pipe is not None:
                    receiver.count(len(data))
                    await pipe.add(data)
                elif kind == "end" and pipe is not None:
                    await pipe.flush()
                    await pipe.drain()
                    pipe = None
            events.clear()
    except BaseException:
        if pipe is not None:
            await pipe.settle()
        raise
    try:
        parser.finalize()
    except MultipartParseError as exc:
        raise BadRequestError(f"malformed multipart body: {exc}") from None
    if not receiver.files:
        raise BadRequestError("no `file` part in the form: use -F file=@model.pth")


async def receive_upload(
    request: Request,
    workdir: Path,
    *,
    max_bytes: int,
    filename: str | None,
    pace: UploadPace | None = None,
    on_header: OnHeader | None = None,
) -> list[StagedFile]:
    """Stream the request body into staged files in ``workdir``, closed and fsynced.

    Args:
        pace: how slow the client may be (default: no limit).
        on_header: called with a raw body's first ``8 + N`` bytes (a safetensors header,
            when it is one), its announced size and file name, as soon as they are in, so
            inspection overlaps the rest of the upload.

    Returns:
        One staged file per uploaded file, in upload order, each with its sha256 and size.

    Raises:
        UploadTooLargeError: the body exceeds ``max_bytes`` (announced or received).
        UploadTimeoutError: the client stopped sending.
        BadRequestError: a malformed form, a bad file name, or no file at all.
    """
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    multipart = content_type == b"multipart/form-data"
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit():
        slack = _MULTIPART_OVERHEAD if multipart else 0
        if int(declared) > max_bytes + slack:
            raise _too_large(max_bytes)
    receiver = _Receiver(workdir, max_bytes)
    pace = pace or UploadPace()
    try:
        if multipart:
            boundary = options.get(b"boundary")
            if not boundary:
                raise BadRequestError("multipart body without a boundary")
            await _receive_multipart(request, receiver, boundary, pace)
        else:
            await _receive_raw(request, receiver, safe_filename(filename), pace, on_header)
        for staged in receiver.files:
            await run_in_threadpool(staged.close)
    except BaseException:
        for staged in receiver.files:
            staged.discard()
        raise
    return receiver.files
