"""/v1/auth: whether this service asks for API keys (public, so pages can ask without a 401)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter
from pydantic import BaseModel

from app.api.deps import ReadSession, SettingsDep
from app.services.auth import resolve_mode

router = APIRouter(prefix="/v1/auth", tags=["auth"])


class AuthPublic(BaseModel):
    mode: Literal["keys", "local"]


@router.get("")
def get_auth(session: ReadSession, settings: SettingsDep) -> AuthPublic:
    """`keys`: send `Authorization: Bearer <key>`; `local`: no key (loopback only)."""
    return AuthPublic(mode=resolve_mode(session, settings.auth))
