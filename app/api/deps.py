"""Dependencies as ``Annotated`` aliases. A session dependency is the request's one
transaction: it commits after the route returns and before the response is sent."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Annotated, Any, TypeVar

from anyio import to_thread
from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.api.access import PRINCIPAL_SCOPE_KEY
from app.api.app_context import AppContext, app_context
from app.config import Settings
from app.db.session import Database
from app.engine.target_spec import TargetSpec
from app.errors import GraftError
from app.net.outbound import OutboundPolicy
from app.services.auth import Principal, authenticate
from app.services.inspector import InspectorPool
from app.services.jobs.dispatch import Dispatcher
from app.services.jobs.reference import ReferenceSpec
from app.storage import BlobStore

T = TypeVar("T")

__all__ = [
    "ContextDep",
    "DatabaseDep",
    "DispatcherDep",
    "InspectorDep",
    "OutboundDep",
    "ReadPrincipal",
    "ReadSession",
    "SettingsDep",
    "StoreDep",
    "WritePrincipal",
    "WriteSession",
    "check_reference",
    "check_target_architecture",
    "in_write_thread",
    "local_webhook_secret",
]


def _settings(request: Request) -> Settings:
    return app_context(request).settings


def _database(request: Request) -> Database:
    return app_context(request).database


def _store(request: Request) -> BlobStore:
    return app_context(request).store


def _outbound(request: Request) -> OutboundPolicy:
    return app_context(request).outbound


def _inspector(request: Request) -> InspectorPool:
    return app_context(request).inspector


def _dispatcher(request: Request) -> Dispatcher | None:
    return app_context(request).dispatcher


ContextDep = Annotated[AppContext, Depends(app_context)]
SettingsDep = Annotated[Settings, Depends(_settings)]
# None with the local executor: its workers claim jobs from the database themselves.
DispatcherDep = Annotated[Dispatcher | None, Depends(_dispatcher)]
DatabaseDep = Annotated[Database, Depends(_database)]
StoreDep = Annotated[BlobStore, Depends(_store)]
InspectorDep = Annotated[InspectorPool, Depends(_inspector)]
OutboundDep = Annotated[OutboundPolicy, Depends(_outbound)]


def _read_session(database: DatabaseDep) -> Iterator[Session]:
    with database.transaction(write=False) as session:
        yield session


# A write transaction takes SQLite's lock at its first statement (BEGIN IMMEDIATE) and keeps
# it until COMMIT. Under load every thread of the shared pool can sit blocked in BEGIN
# IMMEDIATE behind that lock; if the holder then needed one more pool thread (a sync route's
# response validation, or the commit itself) nothing would move until the busy timeout ran
# out ("database is locked", 500s). Hence the rule for write routes: they are ``async def``,
# do their service call in one hop (``in_write_thread``), and that hop is the last pool thread
# the transaction uses; commit and rollback run on threads of their own
# (``AppContext.finish_limiter``).


async def in_write_thread(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a service call that writes, in one hop of the thread pool (see above)."""
    return await to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def check_target_architecture(
    target: TargetSpec, inspector: InspectorPool, settings: Settings
) -> None:
    """Bind a target's named architecture in a child, as the worker will (none: nothing)."""
    architecture = target.architecture_ref()
    if architecture is not None:
        name, kwargs = architecture
        await inspector.check_architecture(name, kwargs, extra=settings.architectures)


async def check_reference(
    reference: ReferenceSpec | None, inspector: InspectorPool, settings: Settings
) -> None:
    """Bind a job's parity reference (and its target model) in a child, as the worker will."""
    if reference is None:
        return
    named = [("reference.architecture", reference.architecture, reference.kwargs)]
    if reference.target_architecture is not None:
        named.append(
            ("reference.target_architecture", reference.target_architecture,
             reference.target_kwargs)
        )  # fmt: skip
    for field, name, kwargs in named:
        try:
            await inspector.check_architecture(name, kwargs, extra=settings.architectures)
        except GraftError as exc:
            raise exc.prefixed(field) from None


def local_webhook_secret(settings: Settings) -> str | None:
    """GRAFT_WEBHOOK_SECRET, owner ``local``'s webhook secret (unless one is stored)."""
    return settings.webhook_secret.get_secret_value() if settings.webhook_secret else None


async def _write_session(request: Request, database: DatabaseDep) -> AsyncIterator[Session]:
    session = database.writer()
    limiter = app_context(request).finish_limiter
    try:
        yield session
        await to_thread.run_sync(session.commit, limiter=limiter)
    except BaseException:
        await to_thread.run_sync(session.rollback, limiter=limiter)
        raise
    finally:
        await to_thread.run_sync(session.close, limiter=limiter)


ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]


_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `graft keys create`; not needed in `local` mode "
    "(GRAFT_AUTH; the service then listens on loopback only).",
)


def _principal(
    request: Request,
    database: DatabaseDep,
    settings: SettingsDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    # AccessMiddleware authenticated the request before its body was read; a public route
    # that asks for a principal anyway gets the same check here. The header is parsed by us,
    # not by HTTPBearer, so a malformed one gets our 401.
    principal: Principal | None = request.scope.get(PRINCIPAL_SCOPE_KEY)
    if principal is not None:
        return principal
    with database.transaction(write=False) as session:
        return authenticate(session, request.headers.get("authorization"), mode=settings.auth)


def _reader(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    principal.require("read")
    return principal


def _writer(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    principal.require("write")
    return principal


ReadPrincipal = Annotated[Principal, Depends(_reader)]
WritePrincipal = Annotated[Principal, Depends(_writer)]
