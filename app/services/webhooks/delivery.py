"""The webhook delivery loop: an asyncio task beside the API in ``graft serve``.

It costs one task, not a thread: database work hops to the thread pool briefly, and the
HTTP requests are async, through the outgoing-request guard. Several servers on one database
may each run it; a delivery is claimed (its next attempt pushed past the attempt's time
limit) before it is sent, so two loops do not send the same attempt.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import httpx
from anyio import to_thread

from app.db.base import utcnow
from app.db.repositories import IdempotencyRepository, WebhookRepository
from app.db.session import Database
from app.net.outbound import OutboundPolicy, OutboundRefusedError, Resolver, guarded_async_client
from app.services.webhooks.outbox import (
    DeliveryPolicy,
    attempt_outcome,
    owner_secret,
    webhook_headers,
)

__all__ = ["DeliveryLoop"]

logger = logging.getLogger(__name__)

_BATCH = 20
_PURGE_SECONDS = 3600.0


@dataclass
class _Message:
    id: str
    url: str
    body: bytes
    secret: str | None
    attempt: int


class DeliveryLoop:
    """Sends due webhooks until stopped.

    Args:
        database: the shared database.
        outbound: the allow list every delivery goes through.
        policy: retries, backoff and the time limit of one attempt.
        local_secret: GRAFT_WEBHOOK_SECRET, owner ``local``'s secret unless one is stored.
        poll_seconds: how often due deliveries are looked for.
        resolver: the DNS boundary (tests).
    """

    def __init__(
        self,
        database: Database,
        *,
        outbound: OutboundPolicy,
        policy: DeliveryPolicy,
        local_secret: str | None,
        poll_seconds: float,
        resolver: Resolver | None = None,
    ) -> None:
        self.database = database
        self.outbound = outbound
        self.policy = policy
        self.local_secret = local_secret
        self.poll_seconds = poll_seconds
        self.resolver = resolver

    async def run(self) -> None:
        """Deliver until cancelled."""
        async with guarded_async_client(
            self.outbound, resolver=self.resolver, timeout=self.policy.timeout_seconds
        ) as client:
            purged_at = 0.0
            while True:
                try:
                    await self.run_once(client)
                    if time.monotonic() - purged_at >= _PURGE_SECONDS:
                        # Housekeeping that needs the same kind of clock: expired
                        # idempotency records (a live key is never purged, only replaced).
                        purged_at = time.monotonic()
                        await to_thread.run_sync(self._purge)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("webhook delivery loop error; retrying")
                await asyncio.sleep(self.poll_seconds)

    def _purge(self) -> None:
        with self.database.transaction() as session:
            purged = IdempotencyRepository(session).purge(now=utcnow())
        if purged:
            logger.info("purged %d expired idempotency key(s)", purged)

    async def run_once(self, client: httpx.AsyncClient) -> int:
        """Attempt every due delivery once. Returns how many were attempted."""
        ids = await to_thread.run_sync(self._due)
        sent = 0
        for delivery_id in ids:
            message = await to_thread.run_sync(self._claim, delivery_id)
            if message is None:
                continue
            await self._send(client, message)
            sent += 1
        return sent

    def _due(self) -> list[str]:
        with self.database.transaction(write=False) as session:
            return WebhookRepository(session).due(now=utcnow(), limit=_BATCH)

    def _claim(self, delivery_id: str) -> _Message | None:
        hold = self.policy.timeout_seconds * 2 + 5
        with self.database.transaction() as session:
            repo = WebhookRepository(session)
            if not repo.claim(delivery_id, now=utcnow(), hold_seconds=hold):
                return None
            delivery = repo.get(delivery_id)
            if delivery is None:
                return None
            secret = owner_secret(session, delivery.owner, local_secret=self.local_secret)
            return _Message(
                delivery.id, delivery.url, delivery.body.encode(), secret, delivery.attempts + 1
            )

    async def _send(self, client: httpx.AsyncClient, message: _Message) -> None:
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        if message.secret is None:
            error = "the owner has no webhook secret (POST /v1/webhooks/secret)"
        else:
            headers = webhook_headers(
                message.secret, message.id, message.body, timestamp=int(time.time())
            )
            try:
                response = await client.post(message.url, content=message.body, headers=headers)
                status_code = response.status_code
            except OutboundRefusedError as exc:
                error = f"outbound-refused: {exc.message}"
            except httpx.HTTPError as exc:
                error = f"{type(exc).__name__}: {exc}"[:500]
        await to_thread.run_sync(self._record, message, status_code, error, started)

    def _record(
        self, message: _Message, status_code: int | None, error: str | None, started: float
    ) -> None:
        with self.database.transaction() as session:
            repo = WebhookRepository(session)
            delivery = repo.get(message.id)
            if delivery is None:  # the job (and its outbox rows) was deleted meanwhile
                return
            now = utcnow()
            row, state, next_at = attempt_outcome(
                delivery,
                attempt=message.attempt,
                status_code=status_code,
                error=error,
                started=started,
                now=now,
                policy=self.policy,
            )
            repo.record_attempt(delivery, row, state=state, next_attempt_at=next_at, now=now)
        level = logging.INFO if state == "delivered" else logging.WARNING
        logger.log(
            level,
            "webhook %s attempt %d: %s (%s)",
            message.id,
            message.attempt,
            status_code or error,
            state,
        )
