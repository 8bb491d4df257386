"""Signed completion webhooks (Standard Webhooks), from a durable outbox.

A job's terminal status writes one outbox row per subscribed event in the same transaction
(:func:`enqueue_webhooks`). :class:`DeliveryLoop`, which ``graft serve`` runs beside the API,
sends due rows through the outgoing-request guard and records every attempt; a non-2xx answer
or a network error retries with exponential backoff and jitter until the message is
``webhook_max_age_seconds`` old (24 h by default). Rows survive restarts, so nothing pending
is lost; a crash mid-attempt means that attempt is made again (at least once: receivers
dedupe on ``webhook-id``).

Signatures follow https://www.standardwebhooks.com: ``webhook-signature: v1,<base64
HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`` where the key is the base64 part of the
owner's ``whsec_`` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from app.db.base import utcnow
from app.db.models import LOCAL_OWNER, Job, WebhookAttempt, WebhookDelivery
from app.db.repositories import WebhookRepository
from app.net.outbound import OutboundPolicy, OutboundRefusedError
from app.services.errors import ConflictError, NotFoundError

__all__ = [
    "WEBHOOK_EVENTS",
    "Callback",
    "DeliveryPolicy",
    "backoff_seconds",
    "check_callback",
    "check_callback_host",
    "check_callback_secret",
    "deliveries_for_job",
    "enqueue_webhooks",
    "new_secret",
    "owner_secret",
    "retry_delivery",
    "rotate_secret",
    "sign",
    "webhook_headers",
]

logger = logging.getLogger(__name__)

WebhookEvent = Literal["succeeded", "failed", "cancelled"]
WEBHOOK_EVENTS: tuple[WebhookEvent, ...] = ("succeeded", "failed", "cancelled")
_PREFIX = "whsec_"


class Callback(BaseModel):
    """Where to send a job's completion webhooks, and for which statuses."""

    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=1, max_length=2000, description="https URL (allow-listed host)")
    events: list[WebhookEvent] = Field(default_factory=lambda: list(WEBHOOK_EVENTS), min_length=1)


def new_secret() -> str:
    """A fresh ``whsec_<base64 of 32 random bytes>`` secret."""
    return _PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def _key(secret: str) -> bytes:
    raw = secret[len(_PREFIX) :] if secret.startswith(_PREFIX) else secret
    return base64.b64decode(raw)


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body``.

    Args:
        secret: ``whsec_<base64>``.
        message_id: the ``webhook-id``.
        timestamp: the ``webhook-timestamp`` (Unix seconds).
        body: the exact bytes sent.

    Returns:
        The header value.
    """
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def webhook_headers(secret: str, message_id: str, body: bytes, *, timestamp: int) -> dict[str, str]:
    """The three Standard Webhooks headers, plus the content type."""
    return {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(secret, message_id, timestamp, body),
    }


def owner_secret(session: Session, owner: str, *, local_secret: str | None) -> str | None:
    """The owner's signing secret: the stored one, else (owner ``local``) GRAFT_WEBHOOK_SECRET."""
    stored = WebhookRepository(session).secret(owner)
    if stored is not None:
        return stored
    return local_secret if owner == LOCAL_OWNER else None


def rotate_secret(session: Session, owner: str) -> str:
    """Create or replace the owner's secret. Returns it (shown once)."""
    secret = new_secret()
    WebhookRepository(session).set_secret(owner, secret, now=utcnow())
    return secret


def check_callback_host(url: str, *, policy: OutboundPolicy) -> None:
    """Refuse a callback host the allow list refuses (checked by scheme and name here; the
    address is checked again on every connection).

    Raises:
        OutboundRefusedError: the host is not allowed; the message names ``callback.url``.
    """
    try:
        policy.check_url(url)
    except OutboundRefusedError as exc:
        raise exc.prefixed("callback.url") from None


def check_callback_secret(
    session: Session, url: str, owner: str, *, local_secret: str | None
) -> None:
    """Refuse a callback whose owner has no signing secret to sign it with.

    Raises:
        OutboundRefusedError: the owner has no secret (``local_secret``: GRAFT_WEBHOOK_SECRET,
            owner ``local``'s fallback).
    """
    if owner_secret(session, owner, local_secret=local_secret) is None:
        raise OutboundRefusedError(
            "callback: you have no webhook signing secret yet; create one with "
            "POST /v1/webhooks/secret (owner local: or set GRAFT_WEBHOOK_SECRET)",
            url=url,
        )


def check_callback(
    session: Session, url: str, owner: str, *, policy: OutboundPolicy, local_secret: str | None
) -> None:
    """Refuse, at job creation, a callback that could never be delivered: both halves,
    :func:`check_callback_host` then :func:`check_callback_secret`.

    Raises:
        OutboundRefusedError: the host is not allowed, or the owner has no secret.
    """
    check_callback_host(url, policy=policy)
    check_callback_secret(session, url, owner, local_secret=local_secret)


def enqueue_webhooks(session: Session, job: Job, document: dict[str, Any]) -> list[str]:
    """Put the job's webhook for its terminal status in the outbox (if it subscribed).

    Returns:
        The ``webhook-id`` of each message queued.
    """
    callback = job.callback or {}
    events = callback.get("events") or list(WEBHOOK_EVENTS)
    if not callback.get("url") or job.status not in events:
        return []
    body = json.dumps({"type": f"job.{job.status}", "data": document}, separators=(",", ":"))
    message_id = "msg_" + secrets.token_hex(16)
    WebhookRepository(session).enqueue(
        WebhookDelivery(
            id=message_id,
            job_id=job.id,
            owner=job.owner,
            url=callback["url"],
            event_type=f"job.{job.status}",
            body=body,
            state="pending",
            attempts=0,
            next_attempt_at=utcnow(),
            created_at=utcnow(),
        )
    )
    return [message_id]


@dataclass(frozen=True)
class DeliveryPolicy:
    """When to retry and when to give up."""

    max_age_seconds: float = 24 * 3600.0
    backoff_seconds: float = 5.0
    max_backoff_seconds: float = 3600.0
    timeout_seconds: float = 15.0


def backoff_seconds(
    attempt: int, policy: DeliveryPolicy, *, rng: random.Random | None = None
) -> float:
    """Delay before attempt ``attempt + 1``: exponential, capped, with ±50 % jitter so that a
    receiver coming back up is not hit by every pending message at once."""
    base = min(policy.max_backoff_seconds, policy.backoff_seconds * 2 ** max(attempt - 1, 0))
    return base * (0.5 + (rng or random).random())


def attempt_outcome(
    delivery: WebhookDelivery,
    *,
    attempt: int,
    status_code: int | None,
    error: str | None,
    started: float,
    now: datetime,
    policy: DeliveryPolicy,
) -> tuple[WebhookAttempt, str, datetime]:
    """The attempt row, the delivery's next state, and when to try next."""
    row = WebhookAttempt(
        delivery_id=delivery.id,
        attempt=attempt,
        at=now,
        status_code=status_code,
        error=error,
        duration_ms=int((time.monotonic() - started) * 1000),
    )
    if status_code is not None and 200 <= status_code < 300:
        return row, "delivered", now
    retry_at = now + timedelta(seconds=backoff_seconds(attempt, policy))
    if (retry_at - delivery.created_at).total_seconds() > policy.max_age_seconds:
        return row, "failed", now
    return row, "pending", retry_at


def deliveries_for_job(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Each webhook of a job with its attempts, for ``GET /v1/jobs/{id}/deliveries``."""
    return [
        {
            "id": d.id,
            "event": d.event_type,
            "url": d.url,
            "state": d.state,
            "attempts": [
                {
                    "attempt": a.attempt,
                    "at": a.at,
                    "status_code": a.status_code,
                    "error": a.error,
                    "duration_ms": a.duration_ms,
                }
                for a in attempts
            ],
            "next_attempt_at": d.next_attempt_at if d.state == "pending" else None,
            "created_at": d.created_at,
            "finished_at": d.finished_at,
        }
        for d, attempts in WebhookRepository(session).for_job(job_id)
    ]


def retry_delivery(
    session: Session, job_id: str, delivery_id: str, *, now: datetime | None = None
) -> None:
    """Send a job's webhook again, at once, under the same ``webhook-id`` (receivers dedupe).

    Raises:
        NotFoundError: the job has no such delivery.
        ConflictError: it was delivered already.
    """
    delivery = WebhookRepository(session).get(delivery_id)
    if delivery is None or delivery.job_id != job_id:
        raise NotFoundError(f"job {job_id} has no webhook delivery {delivery_id}")
    if delivery.state == "delivered":
        raise ConflictError(f"webhook {delivery_id} was delivered already")
    delivery.state = "pending"
    delivery.next_attempt_at = now or utcnow()
    delivery.finished_at = None
    session.flush()
