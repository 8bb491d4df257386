"""Queries for what flows out of a job: its events, its webhooks, and idempotent requests.

Repositories flush; the caller's unit of work commits (as in :mod:`app.db.repositories`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import (
    IdempotencyRecord,
    JobEvent,
    WebhookAttempt,
    WebhookDelivery,
    WebhookSecret,
)

__all__ = ["IdempotencyRepository", "JobEventRepository", "WebhookRepository"]


class JobEventRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def append(self, job_id: str, event: str, data: dict[str, Any], *, terminal: bool) -> int:
        """Add the job's next event. Returns its sequence number (1, 2, …).

        Writers of one job's events are serialised by the job row itself (its lease holder, or
        the transaction that finishes it), so ``max + 1`` cannot collide in practice; the
        primary key makes a collision an error rather than a lost event.
        """
        last = self.session.scalar(select(func.max(JobEvent.seq)).where(JobEvent.job_id == job_id))
        seq = int(last or 0) + 1
        self.session.add(
            JobEvent(job_id=job_id, seq=seq, event=event, data=data, terminal=terminal)
        )
        self.session.flush()
        return seq

    def after(self, job_id: str, seq: int, *, limit: int = 500) -> list[JobEvent]:
        """The job's events numbered above ``seq``, in order."""
        return list(
            self.session.scalars(
                select(JobEvent)
                .where(JobEvent.job_id == job_id, JobEvent.seq > seq)
                .order_by(JobEvent.seq)
                .limit(limit)
            )
        )

    def get(self, job_id: str, seq: int) -> JobEvent | None:
        return self.session.get(JobEvent, (job_id, seq))


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def secret(self, owner: str) -> str | None:
        row = self.session.get(WebhookSecret, owner)
        return row.secret if row is not None else None

    def set_secret(self, owner: str, secret: str, *, now: datetime) -> None:
        row = self.session.get(WebhookSecret, owner)
        if row is None:
            self.session.add(WebhookSecret(owner=owner, secret=secret, created_at=now))
        else:
            row.secret, row.created_at = secret, now
        self.session.flush()

    def enqueue(self, delivery: WebhookDelivery) -> WebhookDelivery:
        self.session.add(delivery)
        self.session.flush()
        return delivery

    def due(self, *, now: datetime, limit: int) -> list[str]:
        """Ids of pending deliveries whose next attempt is due, oldest first."""
        return list(
            self.session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.state == "pending", WebhookDelivery.next_attempt_at <= now)
                .order_by(WebhookDelivery.next_attempt_at, WebhookDelivery.id)
                .limit(limit)
            )
        )

    def claim(self, delivery_id: str, *, now: datetime, hold_seconds: float) -> bool:
        """Take a due delivery for one attempt: its next attempt moves past the attempt's
        time limit, so another delivery loop skips it, and a crash mid-attempt retries it."""
        result = self.session.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.id == delivery_id,
                WebhookDelivery.state == "pending",
                WebhookDelivery.next_attempt_at <= now,
            )
            .values(next_attempt_at=now + timedelta(seconds=hold_seconds))
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount)  # type: ignore[attr-defined]

    def get(self, delivery_id: str) -> WebhookDelivery | None:
        return self.session.get(WebhookDelivery, delivery_id)

    def record_attempt(
        self,
        delivery: WebhookDelivery,
        attempt: WebhookAttempt,
        *,
        state: str,
        next_attempt_at: datetime,
        now: datetime,
    ) -> None:
        """Store an attempt and move the delivery on (delivered, failed, or due again)."""
        self.session.add(attempt)
        delivery.attempts = attempt.attempt
        delivery.state = state
        delivery.next_attempt_at = next_attempt_at
        if state != "pending":
            delivery.finished_at = now
        self.session.flush()

    def for_job(self, job_id: str) -> list[tuple[WebhookDelivery, list[WebhookAttempt]]]:
        deliveries = list(
            self.session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.job_id == job_id)
                .order_by(WebhookDelivery.created_at, WebhookDelivery.id)
            )
        )
        out = []
        for d in deliveries:
            attempts = self.session.scalars(
                select(WebhookAttempt)
                .where(WebhookAttempt.delivery_id == d.id)
                .order_by(WebhookAttempt.attempt)
            )
            out.append((d, list(attempts)))
        return out


class IdempotencyRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def get(self, owner: str, key: str) -> IdempotencyRecord | None:
        return self.session.get(IdempotencyRecord, (owner, key))

    def begin(
        self, owner: str, key: str, *, now: datetime, expires_at: datetime, stale_before: datetime
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
                    IdempotencyRecord(owner=owner, key=key, created_at=now, expires_at=expires_at)
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
