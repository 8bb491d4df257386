"""A sandbox child's side of an object-store-to-object-store job: presigned URLs only.

The worker (trusted) hands its conversion child a :class:`StreamSpec`: a presigned GET of
the source blob and presigned ``UploadPart`` URLs of a multipart upload, all on the store's
own endpoint. The child holds no credentials and talks to no other host: it reads the source
by ranged GETs (:func:`ranged_fetch`, behind the engine's read-ahead) and ``PUT``s the
output's parts as they fill (:class:`PresignedParts`, a few in flight), then names their
ETags, over :class:`app.net.origin.OriginConnections` (one origin, kept-alive connections).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict

from app.errors import InternalError
from app.net.origin import OriginConnections, Response

__all__ = ["PresignedParts", "RemoteFile", "StreamSpec", "ranged_fetch"]


class RemoteFile(BaseModel):
    """One stored file the child reads by ranges.

    Attributes:
        name: its file name (the report names it so).
        url: a presigned GET of its blob.
        size: its length in bytes.
        sha256: its digest (as recorded when it was uploaded).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    url: str
    size: int
    sha256: str


class StreamSpec(BaseModel):
    """What a conversion child streams from and to (it crosses into the child as JSON).

    Attributes:
        source: the source, one safetensors file.
        target: a checkpoint target's template, one safetensors file, read the same way.
        output_name: the weights file's name.
        part_urls: presigned ``UploadPart`` URLs, part 1 first.
        part_size: every part's size but the last (the child may use a larger one when
            the output would otherwise need more parts than URLs).
        read_block: bytes per ranged GET of the source (the read-ahead's block).
        in_flight: parts sent at once (each one part of memory).
        in_order: the server takes parts in order only: the header's part cannot wait
            for the end, so the engine takes the header's digests in a first pass.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    source: RemoteFile
    target: RemoteFile | None = None
    output_name: str
    part_urls: list[str]
    part_size: int
    read_block: int = 32 << 20
    in_flight: int = 2
    in_order: bool = True

    def origin(self) -> tuple[str, str]:
        """The one ``(scheme, host:port)`` every URL must name.

        Raises:
            InternalError: a URL names another host, or a scheme that is not HTTP(S).
        """
        source = urlsplit(self.source.url)
        origin = (source.scheme, source.netloc)
        for url in [*self.part_urls, *([self.target.url] if self.target else [])]:
            parts = urlsplit(url)
            if (parts.scheme, parts.netloc) != origin:
                raise InternalError("a streamed job's URLs must all name the store's endpoint")
        if origin[0] not in ("http", "https"):
            raise InternalError(f"a streamed job cannot use {origin[0]!r} URLs")
        return origin


def ranged_fetch(spec: StreamSpec, file: RemoteFile) -> Callable[[int, int], bytes]:
    """``fetch(offset, length)``: that range of ``file`` (the source or the template), by a
    ranged GET.

    Raises (from ``fetch``):
        OSError: the server answered anything but those bytes.
    """
    connections = OriginConnections(spec.origin())

    def fetch(offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        end = offset + length - 1

        def expect(response: Response) -> str | None:
            # 206, or a 200 naming the range (rclone's), or the whole object when asked for.
            ranged = (response.getheader("Content-Range") or "").startswith(
                f"bytes {offset}-{end}/"
            )
            whole = offset == 0 and length == file.size
            size = response.getheader("Content-Length")
            if response.status not in (200, 206) or not (ranged or whole) or size != str(length):
                return f"ranged GET of {file.name}: HTTP {response.status}, {size} bytes"
            return None

        _, _, data = connections.request("GET", file.url, {"Range": f"bytes={offset}-{end}"},
                                         expect=expect)  # fmt: skip
        if len(data) != length:
            raise OSError(f"ranged GET of {file.name}: {len(data)} bytes of {length}")
        return data

    return fetch


class PresignedParts:
    """The engine's ``PartSink``: each part ``PUT`` to its presigned URL on a thread, at most
    ``in_flight`` at once (a full pipeline blocks the writer: bounded memory).

    Attributes:
        part_size: the part size the writer cuts at (at least).
        max_parts: how many parts there are URLs for.
        in_order: send the parts in order (the engine's cue, see ``StreamSpec``).
        etags: ``(part number, ETag)`` of the parts sent.
    """

    def __init__(self, spec: StreamSpec) -> None:
        self._spec = spec
        self._connections = OriginConnections(spec.origin())
        self.part_size = spec.part_size
        self.max_parts = len(spec.part_urls)
        self.in_order = spec.in_order
        self.etags: list[tuple[int, str]] = []
        self.header: bytes = b""  # the start of part 1 (the output's header), once sent
        self._pending: deque[Future[tuple[int, str]]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=spec.in_flight, thread_name_prefix="graft-put")

    def put(self, number: int, data: bytearray) -> None:
        if number > len(self._spec.part_urls):
            raise InternalError(f"part {number} has no presigned URL (parts too small)")
        if number == 1:
            self.header = bytes(data[: 8 + int.from_bytes(data[:8], "little")])
        while len(self._pending) >= self._spec.in_flight:
            self.etags.append(self._pending.popleft().result())
        self._pending.append(self._pool.submit(self._send, number, data))

    def _send(self, number: int, data: bytearray) -> tuple[int, str]:
        url = self._spec.part_urls[number - 1]
        headers = {"Content-Length": str(len(data))}
        status, answer, body = self._connections.request("PUT", url, headers, data)
        etag = answer.get("ETag")
        if status != 200 or not etag:
            raise OSError(f"PUT of part {number}: HTTP {status} {body[:200]!r}")
        return number, etag

    def finish(self) -> list[tuple[int, str]]:
        """Wait for every part; their ``(number, ETag)`` in part order."""
        while self._pending:
            self.etags.append(self._pending.popleft().result())
        self._pool.shutdown(wait=True)
        return sorted(self.etags)

    def close(self) -> None:
        """Stop sending (what is in flight finishes)."""
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)
