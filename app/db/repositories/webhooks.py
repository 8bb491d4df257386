"""Queries for the webhook outbox: secrets, due deliveries, attempts."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.models import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookSecret,
)
from app.db.secret_box import session_box

__all__ = ["WebhookRepository"]


class WebhookRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    def secret(self, owner: str) -> str | None:
        """The owner's secret, opened (the row holds a Fernet token)."""
        row = self.session.get(WebhookSecret, owner)
        return session_box(self.session).open(row.secret) if row is not None else None

    def set_secret(self, owner: str, secret: str, *, now: datetime) -> None:
        """Store the owner's secret, sealed."""
        secret = session_box(self.session).seal(secret)
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
