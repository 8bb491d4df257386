"""/v1/links: signed, key-free download URLs for browsers (valid ten minutes)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.app_context import app_context
from app.api.deps import ReadPrincipal, ReadSession, StoreDep
from app.api.downloads import blob_response
from app.api.errors import problem
from app.services.jobs import service as jobs_service
from app.services.jobs.naming import download_filename
from app.services.links import sign_link, verify_link

router = APIRouter(tags=["links"])


class LinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    job: str = Field(description="a job id")
    artifact: Literal["weights", "report", "manifest", "attestation"]


class LinkPublic(BaseModel):
    url: str = Field(description="a path on this server; GET it with no key")
    filename: str = Field(description="the name it downloads as (source.target.suffix)")
    expires_at: datetime


def _secret(request: Request) -> bytes:
    return app_context(request).link_secret


@router.post("/v1/links", responses={404: problem("no such job or artifact")})
def create_link(
    body: Annotated[LinkCreate, Body()],
    request: Request,
    principal: ReadPrincipal,
    session: ReadSession,
) -> LinkPublic:
    """A signed URL for one artifact of a job you may read; it needs no key for 10 minutes."""
    artifact = jobs_service.get_artifact(
        session, body.job, body.artifact, owner=principal.scope_owner
    )
    link = sign_link(_secret(request), body.job, body.artifact)
    return LinkPublic(
        url=f"/v1/links/{link.token}",
        filename=download_filename(session, artifact.job, artifact),
        expires_at=datetime.fromtimestamp(link.expires_at, UTC),
    )


@router.head("/v1/links/{token}", include_in_schema=False)
@router.get("/v1/links/{token}", responses={404: problem("an unknown, forged or expired link")})
def follow_link(token: str, request: Request, session: ReadSession, store: StoreDep) -> Response:
    """Public: the artifact a signed link names (weights as an attachment, Range supported)."""
    job_id, artifact_name = verify_link(_secret(request), token)
    artifact = jobs_service.get_artifact(session, job_id, artifact_name, owner=None)
    return blob_response(
        store,
        artifact,
        range_header=request.headers.get("range"),
        attachment=True,
        filename=download_filename(session, artifact.job, artifact),
    )
