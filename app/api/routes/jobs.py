"""/v1/jobs: create, list, read, cancel, and the artifacts a job publishes."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Response, status
from fastapi.responses import FileResponse

from app.api.deps import ReadSession, SettingsDep, StoreDep, WriteSession
from app.api.schemas import ArtifactPublic, ArtifactsPublic, JobCreate, JobPublic, JobsPublic
from app.services import jobs as service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={422: {"description": "invalid recipe (names the rule) or unknown checkpoint"}},
)
def create_job(
    body: Annotated[JobCreate, Body()],
    response: Response,
    session: WriteSession,
    settings: SettingsDep,
) -> JobPublic:
    """Queue a conversion; poll the `Location` it returns."""
    job = service.create_job(
        session,
        source=body.source,
        target=body.target.model_dump(),
        recipe=body.recipe,
        output_format=body.output.format,
        output_dtype=body.output.dtype,
        dry_run=body.dry_run,
        max_attempts=settings.max_attempts,
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobPublic.of(job)


@router.get("")
def list_jobs(
    session: ReadSession,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
) -> JobsPublic:
    items, count = service.list_jobs(session, offset=offset, limit=limit, status=status)
    return JobsPublic(data=[JobPublic.of(j) for j in items], count=count)


@router.get("/{job_id}")
def get_job(job_id: str, session: ReadSession) -> JobPublic:
    return JobPublic.of(service.get_job(session, job_id))


@router.post("/{job_id}/cancel", responses={409: {"description": "the job already finished"}})
def cancel_job(job_id: str, session: WriteSession) -> JobPublic:
    """Cancel a queued job at once; a running one stops at its next checkpoint of progress."""
    return JobPublic.of(service.cancel_job(session, job_id))


@router.get("/{job_id}/artifacts")
def list_artifacts(job_id: str, session: ReadSession) -> ArtifactsPublic:
    job = service.get_job(session, job_id)
    return ArtifactsPublic(
        data=[ArtifactPublic.of(a) for a in job.artifacts], count=len(job.artifacts)
    )


@router.get(
    "/{job_id}/report",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}, "text/plain": {}}}},
)
def get_report(
    job_id: str,
    session: ReadSession,
    store: StoreDep,
    format: Annotated[Literal["json", "text"], Query()] = "json",
) -> FileResponse:
    """The report (schema graft.report/v1), or its grouped human form with `?format=text`."""
    artifact = service.get_artifact(
        session, job_id, "report" if format == "json" else "report-text"
    )
    return FileResponse(store.path(artifact.sha256), media_type=artifact.media_type)


@router.get("/{job_id}/manifest", response_class=FileResponse)
def get_manifest(job_id: str, session: ReadSession, store: StoreDep) -> FileResponse:
    artifact = service.get_artifact(session, job_id, "manifest")
    return FileResponse(store.path(artifact.sha256), media_type=artifact.media_type)


@router.get(
    "/{job_id}/weights",
    response_class=FileResponse,
    responses={206: {"description": "a byte range (HTTP Range)"}},
)
def get_weights(job_id: str, session: ReadSession, store: StoreDep) -> FileResponse:
    """The converted weights; supports `Range: bytes=…`."""
    artifact = service.get_artifact(session, job_id, "weights")
    return FileResponse(
        store.path(artifact.sha256),
        media_type=artifact.media_type,
        filename=artifact.filename,
        headers={"ETag": f'"{artifact.sha256}"'},
    )
