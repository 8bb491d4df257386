"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import PROBLEM_RESPONSES, install_error_handlers
from app.api.idempotency import IdempotencyMiddleware
from app.api.routes import architectures, checkpoints, health, jobs, webhooks
from app.config import Settings, get_settings
from app.db.session import Database
from app.net.outbound import OutboundPolicy
from app.sandbox.inspector import InspectorPool
from app.services.limits import inspection_limits
from app.services.webhook_delivery import DeliveryLoop
from app.services.webhooks import DeliveryPolicy
from app.storage import open_store

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API. The schema must already be migrated (``graft serve`` does it).

    Args:
        settings: configuration; read from ``GRAFT_*`` when omitted.
    """
    settings = settings or get_settings()
    # Parsed here so that a bad GRAFT_OUTBOUND_ALLOW stops the start, with its reason.
    outbound = OutboundPolicy.from_setting(
        settings.outbound_allow, mlflow_tracking_uri=settings.mlflow_tracking_uri
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
        store = open_store(settings)
        store.ensure()
        inspector = InspectorPool(
            size=settings.inspectors,
            timeout=settings.inspect_timeout_seconds,
            limits=inspection_limits(settings),
            max_tensors=settings.max_tensors,
        )
        await inspector.start()
        app.state.settings = settings
        app.state.database = database
        app.state.store = store
        app.state.inspector = inspector
        app.state.outbound = outbound
        deliveries = asyncio.create_task(_delivery_loop(database, outbound, settings).run())
        try:
            yield
        finally:
            deliveries.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliveries
            await inspector.close()
            database.dispose()

    app = FastAPI(
        title="Graft",
        version="0.1.0",
        summary="Transplant pretrained PyTorch weights into a different architecture.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.add_middleware(IdempotencyMiddleware)
    app.include_router(health.router)
    for module in (checkpoints, jobs, webhooks):
        app.include_router(module.router, responses=PROBLEM_RESPONSES)
    app.include_router(architectures.router)
    return app


def _delivery_loop(
    database: Database, outbound: OutboundPolicy, settings: Settings
) -> DeliveryLoop:
    """The webhook outbox's sender: one asyncio task in the API process (``graft serve``)."""
    secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
    return DeliveryLoop(
        database,
        outbound=outbound,
        policy=DeliveryPolicy(
            max_age_seconds=settings.webhook_max_age_seconds,
            backoff_seconds=settings.webhook_backoff_seconds,
            max_backoff_seconds=settings.webhook_max_backoff_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
        ),
        local_secret=secret,
        poll_seconds=settings.webhook_poll_seconds,
    )
