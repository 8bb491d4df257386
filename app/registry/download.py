"""Streamed downloads with sha256 and a size cap (the registry client's and URL sources').

A download is written to ``<dest>.part`` and renamed into place only once complete, so a
failure never leaves a file that looks whole. The size cap is enforced on the announced
``Content-Length`` (before any byte is read) and again on the bytes actually received.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.registry.errors import (
    RegistryError,
    RegistryNotFoundError,
    SourceTooLargeError,
    SourceUnavailableError,
)

__all__ = ["MAX_REDIRECTS", "DownloadedFile", "stream_to_file"]

logger = logging.getLogger(__name__)

_CHUNK = 1024 * 1024
MAX_REDIRECTS = 5


@dataclass(frozen=True)
class DownloadedFile:
    """A file fetched to local disk.

    Attributes:
        path: where it now lies.
        size: its length in bytes.
        sha256: hex digest of its bytes.
    """

    path: Path
    size: int
    sha256: str

    @property
    def name(self) -> str:
        """The file's name in its checkpoint: the downloaded file's own."""
        return self.path.name


def _status_error(
    response: httpx.Response, what: str, unavailable: type[RegistryError]
) -> RegistryError:
    status = response.status_code
    if status == 404:
        return RegistryNotFoundError(f"{what}: not found (404)")
    # 5xx and 429 are the server's trouble, so a later attempt may succeed; other 4xx won't.
    retryable = status >= 500 or status == 429
    return unavailable(f"{what}: HTTP {status}", retryable=retryable)


def stream_to_file(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    unavailable: type[RegistryError] = SourceUnavailableError,
    headers: dict[str, str] | None = None,
) -> DownloadedFile:
    """GET ``url`` into ``dest``, hashing as it streams.

    Args:
        client: a guarded client (see :mod:`app.net.outbound`).
        url: what to fetch.
        dest: the final path; ``<dest>.part`` is used while downloading.
        max_bytes: the size cap.
        unavailable: the error raised when the host fails (the registry's or a source's).
        headers: extra request headers (the registry's token, only for the registry's host).

    Returns:
        The downloaded file.

    Raises:
        SourceTooLargeError: over ``max_bytes`` (announced or received).
        RegistryNotFoundError: the server answered 404.
        RegistryError: ``unavailable`` for connection failures and other error statuses.
        OutboundRefusedError: the guard refused the URL, an address or a redirect.
    """
    part = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    size = 0
    try:
        # Redirects are followed (presigned object-store URLs); the guard checks every hop and
        # httpx drops Authorization when a hop leaves the origin.
        with client.stream("GET", url, headers=headers, follow_redirects=True) as response:
            if response.status_code != 200:
                raise _status_error(response, f"GET {url}", unavailable)
            announced = response.headers.get("Content-Length")
            if announced is not None and announced.isdigit() and int(announced) > max_bytes:
                raise SourceTooLargeError(
                    f"{url} is {int(announced)} bytes, over the {max_bytes}-byte cap"
                )
            with part.open("wb") as out:
                for chunk in response.iter_bytes(_CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise SourceTooLargeError(f"{url} exceeds the {max_bytes}-byte cap")
                    digest.update(chunk)
                    out.write(chunk)
        part.replace(dest)
    except httpx.HTTPError as exc:
        part.unlink(missing_ok=True)
        raise unavailable(f"GET {url} failed: {exc}") from exc
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    logger.info("fetched %s (%d bytes) to %s", url, size, dest)
    return DownloadedFile(path=dest, size=size, sha256=digest.hexdigest())
