"""/v1/webhooks: the caller's webhook signing secret."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from app.api.deps import WritePrincipal, WriteSession, in_write_thread
from app.api.schemas import WebhookSecretPublic
from app.services.webhooks import outbox as service

router = APIRouter(prefix="/v1/webhooks", tags=["webhooks"])


@router.post("/secret", status_code=status.HTTP_201_CREATED)
async def rotate_secret(
    principal: WritePrincipal, session: WriteSession, response: Response
) -> WebhookSecretPublic:
    """Create or rotate your webhook signing secret and return it, once. Webhooks sent from
    now on (retries included) are signed with it. The answer is never stored, by a cache or
    as an idempotent response: a retry with the same Idempotency-Key rotates again."""
    response.headers["Cache-Control"] = "no-store"
    secret = await in_write_thread(service.rotate_secret, session, principal.owner)
    return WebhookSecretPublic(secret=secret)
