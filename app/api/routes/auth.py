"""/v1/auth: whether this service wants API keys, so pages know to ask without a 401."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from app.api.deps import DatabaseDep
from app.services.auth import keys_configured

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
def get_auth(request: Request, database: DatabaseDep) -> AuthPublic:
    """Public: `keys` once any API key exists, else `local`; and the optional endpoints."""
    with database.transaction(write=False) as session:
        mode: Literal["keys", "local"] = "keys" if keys_configured(session) else "local"
    return AuthPublic(mode=mode, capabilities=_capabilities(request))
