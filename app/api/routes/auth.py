"""/v1/auth: whether this service wants API keys, so pages know to ask without a 401."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.api.deps import ReadSession, SettingsDep
from app.services.auth import resolve_mode

router = APIRouter(prefix="/v1/auth", tags=["auth"])


class AuthPublic(BaseModel):
    mode: Literal["keys", "local"] = Field(
        description="keys: every /v1 request needs `Authorization: Bearer`; local: none does"
    )
    capabilities: list[str] = Field(
        description="optional endpoints this server has (e.g. `job-events` for "
        "GET /v1/jobs/{id}/events), so clients never probe for them"
    )


# Optional endpoints, by the path that provides them. Read off the app's own OpenAPI document
# (built once, then cached by FastAPI) rather than probed by the pages: Chromium logs every
# failed fetch as a console error.
_CAPABILITIES = {"job-events": "/v1/jobs/{job_id}/events", "plans": "/v1/plans"}


def _capabilities(request: Request) -> list[str]:
    paths = request.app.openapi().get("paths", {})
    return sorted(name for name, path in _CAPABILITIES.items() if path in paths)


@router.get("")
def get_auth(request: Request, session: ReadSession, settings: SettingsDep) -> AuthPublic:
    """Public: `keys`: send `Authorization: Bearer <key>`; `local`: no key (loopback only);
    and the optional endpoints this server has."""
    return AuthPublic(
        mode=resolve_mode(session, settings.auth), capabilities=_capabilities(request)
    )
