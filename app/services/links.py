"""Signed download links: a URL that fetches one job artifact for ten minutes, with no key.

Browsers cannot put an ``Authorization`` header on a plain ``<a download>`` link, and no
cookie carries authority here, so a page asks ``POST /v1/links`` (with its key) for a URL
whose path carries the job, the artifact, the expiry and an HMAC-SHA256 of those three under
a server secret. Anyone holding the URL may fetch that one artifact until it expires; the
secret never leaves the server.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from dataclasses import dataclass

from app.services.errors import NotFoundError

__all__ = ["ARTIFACTS", "LINK_SECONDS", "SignedLink", "sign_link", "verify_link"]

LINK_SECONDS = 600
ARTIFACTS = ("weights", "report", "manifest", "attestation")


@dataclass(frozen=True)
class SignedLink:
    """A link's path (under ``/v1/links/``) and when it stops working (Unix seconds)."""

    token: str
    expires_at: int


def _mac(secret: bytes, message: str) -> str:
    digest = hmac.new(secret, message.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def sign_link(secret: bytes, job_id: str, artifact: str, *, now: float | None = None) -> SignedLink:
    """Sign ``job_id``'s ``artifact`` for :data:`LINK_SECONDS`.

    Args:
        secret: the server's link secret.
        job_id: a job the caller may read (checked by the caller).
        artifact: one of :data:`ARTIFACTS`.
        now: the current time (tests).

    Returns:
        The token to put after ``/v1/links/`` and its expiry.
    """
    expires = int(now if now is not None else time.time()) + LINK_SECONDS
    message = f"{job_id}.{artifact}.{expires}"
    return SignedLink(f"{message}.{_mac(secret, message)}", expires)


def verify_link(secret: bytes, token: str, *, now: float | None = None) -> tuple[str, str]:
    """The ``(job_id, artifact)`` a token grants.

    Raises:
        NotFoundError: a malformed, forged or expired token (one answer for all, so a probe
            learns nothing about which part was wrong).
    """
    parts = token.split(".")
    refused = NotFoundError("this link is unknown or has expired; ask for a new one")
    if len(parts) != 4 or parts[1] not in ARTIFACTS or not parts[2].isdigit():
        raise refused
    job_id, artifact, expires, mac = parts
    if not hmac.compare_digest(_mac(secret, f"{job_id}.{artifact}.{expires}"), mac):
        raise refused
    if int(expires) < (now if now is not None else time.time()):
        raise refused
    return job_id, artifact
