"""Queries for API keys."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from app.db.models import (
    ApiKey,
)

__all__ = ["ApiKeyRepository"]


class ApiKeyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def add(self, key: ApiKey) -> ApiKey:
        self.session.add(key)
        self.session.flush()
        return key

    def get(self, key_id: str) -> ApiKey | None:
        return self.session.get(ApiKey, key_id)

    def active(self, key_id: str) -> ApiKey | None:
        key = self.session.get(ApiKey, key_id)
        return key if key is not None and key.revoked_at is None else None

    def any_active(self) -> bool:
        return bool(self.session.scalar(select(exists().where(ApiKey.revoked_at.is_(None)))))

    def any_ever(self) -> bool:
        """Whether a key was ever created: revoked keys keep their row (revoking sets
        ``revoked_at``; nothing deletes a key), so this never turns false again."""
        return bool(self.session.scalar(select(exists().where(ApiKey.id.is_not(None)))))

    def all(self) -> list[ApiKey]:
        return list(self.session.scalars(select(ApiKey).order_by(ApiKey.created_at, ApiKey.id)))

    def revoke(self, key_id: str, *, now: datetime) -> bool:
        result = self.session.execute(
            update(ApiKey)
            .where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None))
            .values(revoked_at=now)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]
