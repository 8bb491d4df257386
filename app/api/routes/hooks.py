"""POST /v1/hooks/mlflow: MLflow registry webhooks, authenticated by their signature.

Public (no API key): MLflow cannot send one. The signature and the timestamp window are
checked before the body is parsed; the body is read whole, but capped.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request, status
from pydantic import BaseModel

from app.api.deps import (
    OutboundDep,
    SettingsDep,
    WriteSession,
    in_write_thread,
    local_webhook_secret,
)
from app.api.errors import problem
from app.services.errors import UploadTooLargeError
from app.services.jobs.service import JobHooks
from app.services.sources.references import RegistryConfig
from app.services.webhooks.incoming import handle_delivery, verify_signature

router = APIRouter(prefix="/v1/hooks", tags=["hooks"])

_MAX_BODY = 1024 * 1024  # MLflow's model-version events are a few hundred bytes


class HookResult(BaseModel):
    delivery_id: str
    event: str
    jobs: list[str]
    duplicate: bool


async def _body(request: Request) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > _MAX_BODY:
            raise UploadTooLargeError(f"a webhook body is at most {_MAX_BODY} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


@router.post(
    "/mlflow",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        401: problem("a bad or missing signature, or a timestamp over 5 minutes off"),
        400: problem("the body is not an MLflow event"),
    },
)
async def mlflow_hook(
    request: Request, session: WriteSession, settings: SettingsDep, outbound: OutboundDep
) -> HookResult:
    """An MLflow registry event: each matching pipeline starts one job (once per delivery)."""
    body = await _body(request)
    secret = settings.mlflow_webhook_secret
    delivery_id = request.headers.get("x-mlflow-delivery-id")
    verify_signature(
        secret=secret.get_secret_value() if secret else None,
        delivery_id=delivery_id,
        timestamp=request.headers.get("x-mlflow-timestamp"),
        signature=request.headers.get("x-mlflow-signature"),
        body=body,
        now=time.time(),
    )
    outcome = await in_write_thread(
        handle_delivery,
        session,
        delivery_id=delivery_id or "",
        body=body,
        registry=RegistryConfig.from_settings(settings),
        max_attempts=settings.max_attempts,
        hooks=JobHooks(
            outbound=outbound,
            local_secret=local_webhook_secret(settings),
        ),
    )
    return HookResult(
        delivery_id=outcome.delivery_id,
        event=outcome.event,
        jobs=outcome.jobs,
        duplicate=outcome.duplicate,
    )
