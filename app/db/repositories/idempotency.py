"""Queries for idempotent requests."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import and_, delete, or_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import (
    IdempotencyRecord,
)

__all__ = ["IdempotencyRepository"]


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, owner: str, key: str) -> IdempotencyRecord | None:
        return self.session.get(IdempotencyRecord, (owner, key))

    def begin(
        self,
        owner: str,
        key: str,
        *,
        scopes: list[str],
        now: datetime,
        expires_at: datetime,
        stale_before: datetime,
    ) -> bool:
        """Mark a key in flight. Returns False when a live record for it already exists.

        An expired record is replaced, and so is one left in flight since before
        ``stale_before`` (its request died with its process). The insert races safely: the
        primary key lets one request win.
        """
        self.session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.owner == owner,
                IdempotencyRecord.key == key,
                or_(
                    IdempotencyRecord.expires_at <= now,
                    and_(
                        IdempotencyRecord.status_code.is_(None),
                        IdempotencyRecord.created_at < stale_before,
                    ),
                ),
            )
        )
        try:
            with self.session.begin_nested():
                self.session.add(
                    IdempotencyRecord(
                        owner=owner, key=key, scopes=scopes, created_at=now, expires_at=expires_at
                    )
                )
        except IntegrityError:
            return False
        return True

    def complete(
        self,
        owner: str,
        key: str,
        *,
        fingerprint: str,
        status_code: int,
        headers: list[list[str]],
        body: bytes,
    ) -> None:
        self.session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.owner == owner, IdempotencyRecord.key == key)
            .values(fingerprint=fingerprint, status_code=status_code, headers=headers, body=body)
        )

    def forget(self, owner: str, key: str) -> None:
        self.session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.owner == owner, IdempotencyRecord.key == key
            )
        )

    def purge(self, *, now: datetime) -> int:
        result = self.session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]
