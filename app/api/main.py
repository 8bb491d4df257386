"""The FastAPI application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.access import AccessMiddleware
from app.api.app_context import open_context
from app.api.app_loops import background_loops
from app.api.body_deadline import BodyDeadlineMiddleware
from app.api.errors import PROBLEM_RESPONSES, install_error_handlers
from app.api.idempotency import IdempotencyMiddleware
from app.api.routes import (
    align,
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
    uploads,
    webhooks,
)
from app.api.routes.web import install_web
from app.api.uploads import UploadPace
from app.config import Settings, get_settings
from app.net.outbound import OutboundPolicy

__all__ = ["create_app"]


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
        async with open_context(settings, outbound, embedded_workers=embedded_workers) as context:
            app.state.context = context
            async with background_loops(context):
                yield

    app = FastAPI(
        title="Graft",
        version="0.1.0",
        summary="Transplant pretrained PyTorch weights into a different architecture.",
        lifespan=lifespan,
        docs_url=None,  # served from vendored files by app.api.routes.web
        redoc_url=None,  # ReDoc would load from a CDN
    )
    _install_routes(app, settings)
    return app


def _install_routes(app: FastAPI, settings: Settings) -> None:
    """Error handlers, middleware and every router."""
    install_error_handlers(app)
    # Middleware added last runs first: the key is checked (and oversized bodies refused)
    # before the idempotency layer reads the owner and hashes the body.
    app.add_middleware(IdempotencyMiddleware)
    app.add_middleware(AccessMiddleware, max_body_bytes=settings.max_json_bytes)
    # Outermost: every body, read by whichever layer, has the uploads' deadline (SPEC §5.3).
    app.add_middleware(BodyDeadlineMiddleware, pace=UploadPace.from_settings(settings))
    app.include_router(health.router)
    app.include_router(auth.router)
    for module in (checkpoints, uploads, jobs, plans, align, pipelines, hooks, webhooks):
        app.include_router(module.router, responses=PROBLEM_RESPONSES)
    app.include_router(architectures.router)
    app.include_router(schemas.router)
    app.include_router(links.router, responses=PROBLEM_RESPONSES)
    install_web(app)
