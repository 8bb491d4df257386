"""The application's one typed context: everything a request may need, built at start.

``create_app``'s lifespan opens it (:func:`open_context`) and stores it once, as
``app.state.context``; dependencies and middleware read it through :func:`app_context`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from anyio import CapacityLimiter
from starlette.requests import HTTPConnection

from app.api.uploads import UploadSlots
from app.config import Settings
from app.db.secret_box import secret_box_for
from app.db.session import Database
from app.net.outbound import OutboundPolicy
from app.services.inspector import InspectorPool
from app.services.jobs.dispatch import Dispatcher
from app.services.jobs.maintenance import BlobCollector
from app.services.limits import inspection_limits, inspection_memory_budget
from app.services.uploads import ResumableUploads
from app.storage import BlobStore, open_store
from app.storage.staging import RESUMABLE_DIR

__all__ = ["AppContext", "AuthMemo", "app_context", "context_of", "open_context"]

# Threads that commit, roll back and close write sessions (see ``app.api.deps``).
_FINISH_THREADS = 8


@dataclass
class AuthMemo:
    """What the access check learns once and keeps: in ``auto`` mode, that keys exist."""

    keys_seen: bool = False


@dataclass(frozen=True)
class AppContext:
    """The running API's parts.

    Attributes:
        settings: the configuration it started with.
        database: the database.
        store: the blob store.
        inspector: the pool of sandboxed inspection children.
        outbound: the outgoing-request allow list.
        dispatcher: the Celery dispatcher; None with the local executor (workers poll).
        uploads: the upload slots (in total and per owner).
        blob_collector: frees blobs nothing references any more.
        link_secret: the key signed links are made with.
        finish_limiter: the threads that finish write sessions.
        resumable: the resumable (tus) uploads in the staging area.
        embedded_workers: worker processes run beside the API (``graft serve``).
        auth: what the access check remembers between requests.
    """

    settings: Settings
    database: Database
    store: BlobStore
    inspector: InspectorPool
    outbound: OutboundPolicy
    dispatcher: Dispatcher | None
    uploads: UploadSlots
    blob_collector: BlobCollector
    link_secret: bytes
    finish_limiter: CapacityLimiter
    resumable: ResumableUploads
    embedded_workers: int = 0
    auth: AuthMemo = field(default_factory=AuthMemo)


@asynccontextmanager
async def open_context(
    settings: Settings, outbound: OutboundPolicy, *, embedded_workers: int
) -> AsyncIterator[AppContext]:
    """Open the database, the store, the inspectors and the dispatcher; close them after.

    Args:
        settings: the configuration.
        outbound: the outgoing-request allow list, already parsed.
        embedded_workers: worker processes run beside the API.

    Yields:
        The context, for the application's lifetime.
    """
    database = Database(
        settings.database_url,
        busy_timeout_ms=settings.busy_timeout_ms,
        secret_box=secret_box_for(settings),
    )
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
    # Signed links: the configured secret, else one per process (links then end with it).
    secret = settings.link_secret
    dispatcher = _dispatcher(settings)
    context = AppContext(
        settings=settings,
        database=database,
        store=store,
        inspector=inspector,
        outbound=outbound,
        dispatcher=dispatcher,
        uploads=UploadSlots(total=settings.max_uploads, per_owner=settings.max_uploads_per_owner),
        blob_collector=BlobCollector(database, store, claim_seconds=settings.blob_claim_seconds),
        link_secret=secret.get_secret_value().encode() if secret else secrets.token_bytes(32),
        finish_limiter=CapacityLimiter(_FINISH_THREADS),
        resumable=ResumableUploads(
            store.scratch.root / RESUMABLE_DIR,
            max_per_owner=settings.max_resumable_uploads_per_owner,
            expiry_seconds=settings.resumable_upload_expiry_seconds,
            store=store,
        ),
        embedded_workers=embedded_workers,
    )
    try:
        yield context
    finally:
        if dispatcher is not None:
            dispatcher.close()
        await inspector.close()
        database.dispose()


def _dispatcher(settings: Settings) -> Any:
    """The Celery dispatcher, or None with the local executor (workers poll the database)."""
    if settings.executor != "celery":
        return None
    from app.executors.celery import CeleryDispatcher

    return CeleryDispatcher(settings)


def context_of(app: Any) -> AppContext:
    """The context of a started application (``app.state.context``)."""
    context: AppContext = app.state.context
    return context


def app_context(connection: HTTPConnection) -> AppContext:
    """The context of the application serving this request."""
    return context_of(connection.app)
