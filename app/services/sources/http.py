"""Sources given by URL: fetched through the outbound guard, streamed with a size cap."""

from __future__ import annotations

from pathlib import Path

from app.net.outbound import OutboundPolicy, Resolver, guarded_client
from app.registry.download import MAX_REDIRECTS, DownloadedFile, stream_to_file

__all__ = ["fetch_url"]


def fetch_url(
    url: str,
    dest: Path,
    *,
    max_bytes: int,
    policy: OutboundPolicy,
    timeout: float = 60.0,
    resolver: Resolver | None = None,
) -> DownloadedFile:
    """Fetch a source given by URL, through the outbound guard.

    ``https`` URLs (``http`` only to hosts listed exactly) on allow-listed hosts; redirects are
    followed up to five hops, each checked again.

    Args:
        url: the source.
        dest: where to write it.
        max_bytes: the size cap.
        policy: the outbound allow list.
        timeout: connect and read timeout, seconds.
        resolver: DNS override, for tests.

    Returns:
        The downloaded file with its sha256.

    Raises:
        OutboundRefusedError: before any connection, for a scheme, host or address not allowed.
        SourceUnavailableError: the host failed (``retryable`` tells whether to try again).
        RegistryNotFoundError: 404.
        SourceTooLargeError: over ``max_bytes``.
    """
    policy.check_url(url)  # a clear refusal before any client is even built
    with guarded_client(
        policy,
        resolver=resolver,
        timeout=timeout,
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
    ) as client:
        return stream_to_file(client, url, dest, max_bytes=max_bytes)
