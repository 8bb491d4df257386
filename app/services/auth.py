"""API keys and who a request acts for.

A key is ``graft_<id>_<secret>``: the id is public (it finds the row), the secret is 32
random bytes of which only the sha256 is stored, compared in constant time. The token is
shown once, at creation. Scopes: ``read`` (GET), ``write`` (upload, create, cancel, delete;
implies read), ``admin`` (implies both, and sees every owner's resources).

Authentication is a mode, never a side effect of how many keys are active (``GRAFT_AUTH``):
``local`` (no keys; ``graft serve`` binds to loopback only), ``keys`` (every non-public
request needs a valid key, even while none exists), or ``auto`` (the default): ``local`` until
the first key is created, ``keys`` from then on for good. Revoking every key therefore locks
the service rather than opening it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import LOCAL_OWNER, ApiKey
from app.db.repositories import ApiKeyRepository
from app.services.errors import ServiceError

__all__ = [
    "SCOPES",
    "AuthMode",
    "ForbiddenError",
    "Principal",
    "UnauthorizedError",
    "authenticate",
    "create_key",
    "keys_configured",
    "list_keys",
    "resolve_mode",
    "revoke_key",
]

AuthMode = Literal["keys", "local"]

SCOPES = ("read", "write", "admin")
_IMPLIED = {"read": {"read"}, "write": {"read", "write"}, "admin": {"read", "write", "admin"}}
_TOKEN = re.compile(r"^graft_([0-9a-f]{16})_([A-Za-z0-9_-]{20,100})$")
_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class UnauthorizedError(ServiceError):
    type = "unauthorized"
    status = 401
    title = "Unauthorized"


class ForbiddenError(ServiceError):
    type = "forbidden"
    status = 403
    title = "Forbidden"


@dataclass(frozen=True)
class Principal:
    """Who a request acts for.

    Attributes:
        owner: the owner its resources belong to.
        scopes: granted scopes, implications expanded.
        key_id: the key used, or None in the keyless default.
    """

    owner: str
    scopes: frozenset[str]
    key_id: str | None = None

    @property
    def sees_all(self) -> bool:
        return "admin" in self.scopes and self.key_id is not None

    @property
    def scope_owner(self) -> str | None:
        """The owner filter for reads: None (every owner) for admins."""
        return None if self.sees_all else self.owner

    def require(self, scope: str) -> None:
        if scope not in self.scopes:
            raise ForbiddenError(f"this key lacks the {scope!r} scope")


LOCAL = Principal(LOCAL_OWNER, frozenset(SCOPES) - {"admin"})


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def keys_configured(session: Session) -> bool:
    """Whether any unrevoked key exists."""
    return ApiKeyRepository(session).any_active()


def resolve_mode(session: Session, configured: str) -> AuthMode:
    """The effective mode for ``GRAFT_AUTH`` (``auto``, ``keys`` or ``local``).

    Args:
        session: a read transaction.
        configured: the setting; ``auto`` means ``keys`` once any key was ever created.
    """
    if configured in ("keys", "local"):
        return "keys" if configured == "keys" else "local"
    return "keys" if ApiKeyRepository(session).any_ever() else "local"


def create_key(
    session: Session, *, owner: str, scopes: list[str], name: str | None = None
) -> tuple[ApiKey, str]:
    """Create a key. Returns ``(row, token)``; the token is not stored and cannot be shown again.

    Raises:
        ValueError: an unknown scope or an unusable owner name.
    """
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}; got {scopes}")
    if not _OWNER.match(owner):
        raise ValueError(f"owner {owner!r}: use letters, digits, '.', '_', '@' or '-' (max 64)")
    key_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    key = ApiKey(
        id=key_id,
        owner=owner,
        name=name,
        scopes=sorted(set(scopes), key=SCOPES.index),
        secret_sha256=_digest(secret),
    )
    ApiKeyRepository(session).add(key)
    return key, f"graft_{key_id}_{secret}"


def list_keys(session: Session) -> list[ApiKey]:
    return ApiKeyRepository(session).all()


def revoke_key(session: Session, key_id: str) -> bool:
    """Revoke a key by id (or by its full token). Returns whether an active key was revoked."""
    match = _TOKEN.match(key_id)
    return ApiKeyRepository(session).revoke(match.group(1) if match else key_id, now=utcnow())


def authenticate(session: Session, authorization: str | None, *, mode: str = "auto") -> Principal:
    """The principal for an ``Authorization`` header.

    Args:
        session: a read transaction.
        authorization: the header, if sent.
        mode: ``GRAFT_AUTH`` (``auto``, ``keys`` or ``local``), or an already resolved mode.

    Raises:
        UnauthorizedError: keys are required and the header is missing, malformed, unknown
            or revoked.
    """
    repo = ApiKeyRepository(session)
    if resolve_mode(session, mode) == "local":
        return LOCAL
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise UnauthorizedError("send an API key: `Authorization: Bearer graft_…`")
    match = _TOKEN.match(token.strip())
    key = repo.active(match.group(1)) if match else None
    # Compare even when the id is unknown, so timing says nothing about which ids exist.
    expected = key.secret_sha256 if key is not None else "0" * 64
    given = _digest(match.group(2)) if match else "1" * 64
    if not hmac.compare_digest(expected, given) or key is None:
        raise UnauthorizedError("the API key is unknown or revoked")
    scopes: set[str] = set()
    for scope in key.scopes:
        scopes |= _IMPLIED.get(scope, set())
    return Principal(key.owner, frozenset(scopes), key.id)
