"""The FastAPI application factory."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.api.errors import PROBLEM_RESPONSES, install_error_handlers
from app.api.routes import architectures, auth, checkpoints, health, jobs, links, plans
from app.api.routes.web import install_web
from app.config import Settings, get_settings
from app.db.session import Database
from app.sandbox.inspector import InspectorPool
from app.services.limits import inspection_limits
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
        # Signed links: the configured secret, else one per process (links then end with it).
        secret = settings.link_secret
        app.state.link_secret = (
            secret.get_secret_value().encode() if secret else secrets.token_bytes(32)
        )
        try:
            yield
        finally:
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
    app.include_router(health.router)
    for module in (checkpoints, jobs, plans):
        app.include_router(module.router, responses=PROBLEM_RESPONSES)
    app.include_router(architectures.router)
    app.include_router(auth.router)
    app.include_router(links.router, responses=PROBLEM_RESPONSES)
    install_web(app)
    return app
