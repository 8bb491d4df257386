"""The FastAPI application factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from anyio import to_thread
from fastapi import FastAPI

from app.api.access import AccessMiddleware
from app.api.deps import local_webhook_secret
from app.api.errors import PROBLEM_RESPONSES, install_error_handlers
from app.api.idempotency import IdempotencyMiddleware
from app.api.routes import (
    architectures,
    auth,
    checkpoints,
    health,
    hooks,
    jobs,
    links,
    pipelines,
    plans,
    schemas,
    webhooks,
)
from app.api.routes.web import install_web
from app.api.schemas import job_document
from app.api.uploads import UploadSlots
from app.config import Settings, get_settings
from app.db.session import Database
from app.net.outbound import OutboundPolicy
from app.services.dispatch import redispatch_unsent
from app.services.inspector import InspectorPool
from app.services.limits import inspection_limits, inspection_memory_budget
from app.services.maintenance import BlobCollector, reap_leases
from app.services.webhook_delivery import DeliveryLoop
from app.services.webhooks import DeliveryPolicy
from app.storage import open_store

__all__ = ["create_app"]

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, embedded_workers: int = 0) -> FastAPI:
    """Build the API. The schema must already be migrated (``graft serve`` does it).

    Args:
        settings: configuration; read from ``GRAFT_*`` when omitted.
        embedded_workers: how many worker processes run beside it (``graft serve``); then
            ``/readyz`` also waits for one of them to be warm.
    """
    settings = settings or get_settings()
    # Parsed here so that a bad GRAFT_OUTBOUND_ALLOW stops the start, with its reason.
    outbound = OutboundPolicy.from_setting(
        settings.outbound_allow, mlflow_tracking_uri=settings.mlflow_tracking_uri or None
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
            memory_budget=inspection_memory_budget(settings),
        )
        await inspector.start()
        app.state.settings = settings
        app.state.database = database
        app.state.store = store
        app.state.inspector = inspector
        app.state.uploads = UploadSlots(
            total=settings.max_uploads, per_owner=settings.max_uploads_per_owner
        )
        app.state.blob_collector = BlobCollector(
            database, store, claim_seconds=settings.blob_claim_seconds
        )
        maintenance = None
        if settings.maintenance_seconds > 0:
            maintenance = asyncio.create_task(_maintain(app, settings.maintenance_seconds))
        app.state.dispatcher = dispatcher = _dispatcher(settings)
        # Signed links: the configured secret, else one per process (links then end with it).
        secret = settings.link_secret
        app.state.link_secret = (
            secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
        )
        app.state.outbound = outbound
        deliveries = asyncio.create_task(_delivery_loop(database, outbound, settings).run())
        try:
            async with anyio.create_task_group() as tasks:
                if dispatcher is not None:
                    tasks.start_soon(_sweep_unsent, database, dispatcher, settings)
                yield
                tasks.cancel_scope.cancel()
        finally:
            if maintenance is not None:
                maintenance.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await maintenance
            if dispatcher is not None:
                dispatcher.close()
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
        docs_url=None,  # served from vendored files by app.api.routes.web
        redoc_url=None,  # ReDoc would load from a CDN
    )
    app.state.embedded_workers = embedded_workers
    install_error_handlers(app)
    # Middleware added last runs first: the key is checked (and oversized bodies refused)
    # before the idempotency layer reads the owner and hashes the body.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(AccessMiddleware, max_body_bytes=settings.max_json_bytes)
    app.include_router(health.router)
    app.include_router(auth.router)
    for module in (checkpoints, jobs, plans, pipelines, hooks, webhooks):
        app.include_router(module.router, responses=PROBLEM_RESPONSES)
    app.include_router(architectures.router)
    app.include_router(schemas.router)
    app.include_router(links.router, responses=PROBLEM_RESPONSES)
    install_web(app)
    return app


async def _maintain(app: FastAPI, period: float) -> None:
    """Reap lapsed leases and collect unreferenced blobs every ``period`` seconds, so neither
    waits for a worker to poll or for the next start."""
    collector: BlobCollector = app.state.blob_collector
    while True:
        await asyncio.sleep(period)
        try:
            await to_thread.run_sync(reap_leases, app.state.database, job_document)
            await to_thread.run_sync(collector.collect)
        except Exception:  # a locked database or a store hiccup: try again next tick
            logger.exception("maintenance pass failed; retrying next period")


def _dispatcher(settings: Settings) -> Any:
    """The Celery dispatcher, or None with the local executor (workers poll the database)."""
    if settings.executor != "celery":
        return None
    from app.executors.celery_app import CeleryDispatcher

    return CeleryDispatcher(settings)


async def _sweep_unsent(database: Database, dispatcher: Any, settings: Settings) -> None:
    """Send again the jobs whose send failed (the broker was down), once it is back."""
    while True:
        await anyio.sleep(settings.dispatch_sweep_seconds)
        try:
            sent = await anyio.to_thread.run_sync(
                lambda: redispatch_unsent(database, dispatcher, age=settings.dispatch_sweep_seconds)
            )
        except Exception:
            logger.exception("re-sending unsent jobs failed; retrying")
            continue
        if sent:
            logger.info("re-sent %d job(s) to the broker", sent)


def _delivery_loop(
    database: Database, outbound: OutboundPolicy, settings: Settings
) -> DeliveryLoop:
    """The webhook outbox's sender: one asyncio task in the API process (``graft serve``)."""
    return DeliveryLoop(
        database,
        outbound=outbound,
        policy=DeliveryPolicy(
            max_age_seconds=settings.webhook_max_age_seconds,
            backoff_seconds=settings.webhook_backoff_seconds,
            max_backoff_seconds=settings.webhook_max_backoff_seconds,
            timeout_seconds=settings.webhook_timeout_seconds,
        ),
        local_secret=local_webhook_secret(settings),
        poll_seconds=settings.webhook_poll_seconds,
    )
