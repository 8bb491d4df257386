"""Idempotent POSTs (Stripe's semantics), per owner, for ``idempotency_ttl_seconds``.

The first request with a key is marked in flight, runs, and its response is stored with a
fingerprint of the request (method, path, query, body). Within the TTL the same key then
answers:

- with the same fingerprint: the stored response again (status, headers, body);
- with another fingerprint: 409 ``idempotency-conflict``;
- while the first is still running: 409 ``idempotency-in-progress``.

4xx responses are stored (the same request would fail the same way); a 5xx is not, and
neither is a response to a request whose body was not read to the end, so a retry runs again.
Keys belong to an owner, who may hold keys of several scopes: the scopes of the key that made
the first request are kept, and a replay goes only to a key that holds all of them (a
read-only key never sees what a write key's request answered).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import timedelta

from app.db.base import utcnow
from app.db.repositories import IdempotencyRepository
from app.db.session import Database
from app.services.auth import ForbiddenError
from app.services.errors import ServiceError

__all__ = [
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "StoredResponse",
    "begin",
    "check_may_replay",
    "check_same",
    "fingerprint",
    "finish",
    "stored_response",
]

# A request still "in flight" after this long died with its process: its key is freed.
_STALE_SECONDS = 3600.0
MAX_KEY_LENGTH = 255


class IdempotencyConflictError(ServiceError):
    type = "idempotency-conflict"
    status = 409
    title = "Idempotency key reused"


class IdempotencyInProgressError(ServiceError):
    type = "idempotency-in-progress"
    status = 409
    title = "Idempotent request in progress"


@dataclass(frozen=True)
class StoredResponse:
    status_code: int
    headers: list[list[str]]
    body: bytes
    scopes: frozenset[str] = frozenset()  # of the key that made the request


class Fingerprint:
    """sha256 over the request line and the body, fed as the body streams."""

    def __init__(self, method: str, path: str, query: str) -> None:
        self._hash = hashlib.sha256(f"{method}\n{path}\n{query}\n".encode())

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def fingerprint(method: str, path: str, query: str) -> Fingerprint:
    """A fingerprint to feed with the request body."""
    return Fingerprint(method, path, query)


def begin(
    database: Database, owner: str, key: str, *, scopes: frozenset[str], ttl_seconds: float
) -> bool:
    """Mark ``key`` in flight for ``owner``, made by a key with ``scopes``.

    Returns:
        False if a live record already exists.
    """
    now = utcnow()
    with database.transaction() as session:
        return IdempotencyRepository(session).begin(
            owner,
            key,
            scopes=sorted(scopes),
            now=now,
            expires_at=now + timedelta(seconds=ttl_seconds),
            stale_before=now - timedelta(seconds=_STALE_SECONDS),
        )


def stored_response(database: Database, owner: str, key: str) -> tuple[str, StoredResponse]:
    """The fingerprint and the response stored for a key that already has a record.

    Raises:
        IdempotencyInProgressError: the first request is still running.
    """
    with database.transaction(write=False) as session:
        record = IdempotencyRepository(session).get(owner, key)
        if record is None or record.status_code is None or record.fingerprint is None:
            raise IdempotencyInProgressError(
                f"a request with Idempotency-Key {key!r} is still in progress; retry once it "
                "has finished"
            )
        stored = StoredResponse(
            record.status_code,
            list(record.headers or []),
            record.body or b"",
            # A record without scopes predates them: only a writer may see it.
            frozenset(record.scopes if record.scopes is not None else ["read", "write"]),
        )
        return record.fingerprint, stored


def check_may_replay(stored: StoredResponse, scopes: frozenset[str], key: str) -> None:
    """Refuse a replay to a key with fewer scopes than the one that made the request.

    Raises:
        ForbiddenError: a scope of the original key is missing.
    """
    missing = sorted(stored.scopes - scopes)
    if missing:
        raise ForbiddenError(
            f"Idempotency-Key {key!r} was used by a key with the {missing[0]!r} scope, which "
            "this key lacks; use a new Idempotency-Key"
        )


def check_same(stored_print: str, print_: str, key: str) -> None:
    """Refuse a key reused with another request.

    Raises:
        IdempotencyConflictError: the fingerprints differ.
    """
    if stored_print != print_:
        raise IdempotencyConflictError(
            f"Idempotency-Key {key!r} was already used with another request (method, path or "
            "body); use a new key for a new request"
        )


def finish(
    database: Database,
    owner: str,
    key: str,
    *,
    print_: str | None,
    response: StoredResponse | None,
) -> None:
    """Store the response for replay, or (``response`` None: a 5xx, an unread body, a crash)
    free the key so that a retry runs again."""
    with database.transaction() as session:
        repo = IdempotencyRepository(session)
        if response is None or print_ is None:
            repo.forget(owner, key)
        else:
            repo.complete(
                owner,
                key,
                fingerprint=print_,
                status_code=response.status_code,
                headers=response.headers,
                body=response.body,
            )
