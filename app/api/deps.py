"""Dependencies as ``Annotated`` aliases. A session dependency is the request's one
transaction: it commits after the route returns and before the response is sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.session import Database
from app.services.auth import Principal, authenticate
from app.services.inspector import InspectorPool
from app.storage import BlobStore

__all__ = [
    "DatabaseDep",
    "InspectorDep",
    "ReadPrincipal",
    "ReadSession",
    "SettingsDep",
    "StoreDep",
    "WritePrincipal",
    "WriteSession",
]


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def _store(request: Request) -> BlobStore:
    store: BlobStore = request.app.state.store
    return store


def _inspector(request: Request) -> InspectorPool:
    inspector: InspectorPool = request.app.state.inspector
    return inspector


SettingsDep = Annotated[Settings, Depends(_settings)]
DatabaseDep = Annotated[Database, Depends(_database)]
StoreDep = Annotated[BlobStore, Depends(_store)]
InspectorDep = Annotated[InspectorPool, Depends(_inspector)]


def _read_session(database: DatabaseDep) -> Iterator[Session]:
    with database.transaction(write=False) as session:
        yield session


def _write_session(database: DatabaseDep) -> Iterator[Session]:
    with database.transaction(write=True) as session:
        yield session


ReadSession = Annotated[Session, Depends(_read_session, scope="function")]
WriteSession = Annotated[Session, Depends(_write_session, scope="function")]


_bearer = HTTPBearer(
    auto_error=False,
    description="An API key from `graft keys create`; not needed while no key exists "
    "(the service then listens on loopback only).",
)


def _principal(
    request: Request,
    database: DatabaseDep,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    # The header is parsed here, not by HTTPBearer, so a malformed one gets our 401.
    with database.transaction(write=False) as session:
        return authenticate(session, request.headers.get("authorization"))


def _reader(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    principal.require("read")
    return principal


def _writer(principal: Annotated[Principal, Depends(_principal)]) -> Principal:
    principal.require("write")
    return principal


ReadPrincipal = Annotated[Principal, Depends(_reader)]
WritePrincipal = Annotated[Principal, Depends(_writer)]
