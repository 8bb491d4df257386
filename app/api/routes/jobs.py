"""/v1/jobs: create, list, read, cancel, retry a registration, and the artifacts a job
publishes."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import anyio
from anyio import to_thread
from fastapi import APIRouter, BackgroundTasks, Body, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse

from app.api.deps import (
    DatabaseDep,
    DispatcherDep,
    InspectorDep,
    OutboundDep,
    ReadPrincipal,
    ReadSession,
    SettingsDep,
    StoreDep,
    WritePrincipal,
    WriteSession,
    check_reference,
    check_target_architecture,
    in_write_thread,
    local_webhook_secret,
)
from app.api.downloads import blob_response, download_route
from app.api.errors import problem
from app.api.schemas import (
    ArtifactPublic,
    ArtifactsPublic,
    DeliveriesPublic,
    DeliveryPublic,
    JobCreate,
    JobPublic,
    JobsPublic,
)
from app.services.errors import BadRequestError, TooManyRangesError
from app.services.jobs import dispatch, registry_retry, service
from app.services.jobs import events as events_service
from app.services.jobs.naming import download_filename
from app.services.payloads import check_depth, check_skeleton_size
from app.services.recipe_text import pick_recipe
from app.services.sources.references import RegistryConfig
from app.services.webhooks import outbox as webhooks_service

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        413: problem("a body over GRAFT_MAX_JSON_BYTES, too deep, or too large a skeleton"),
        429: problem("the owner has GRAFT_MAX_ACTIVE_JOBS_PER_OWNER queued or running jobs"),
        422: problem(
            "invalid recipe (names the rule), unknown checkpoint, unusable reference or alias, "
            "or a source host not allowed (outbound-refused)"
        ),
    },
)
async def create_job(
    body: Annotated[JobCreate, Body()],
    response: Response,
    principal: WritePrincipal,
    session: WriteSession,
    settings: SettingsDep,
    inspector: InspectorDep,
    database: DatabaseDep,
    dispatcher: DispatcherDep,
    background: BackgroundTasks,
    outbound: OutboundDep,
) -> JobPublic:
    """Queue a conversion; poll the `Location` it returns, or follow its `/events`."""
    check_depth(body, max_depth=settings.max_json_depth)
    check_skeleton_size(
        getattr(body.target, "skeleton", None), max_tensors=settings.max_skeleton_tensors
    )
    await check_target_architecture(body.target, inspector, settings)  # before queueing
    await check_reference(body.reference, inspector, settings)
    request = service.JobRequest(
        source=body.source,
        sources=body.sources,
        target=body.target,
        recipe=pick_recipe(body.recipe, body.recipe_text),
        output_format=body.output.format,
        output_folder=body.output.folder,
        output_dtype=body.output.dtype,
        dry_run=body.dry_run,
        owner=principal.owner,
        checkpoint_owner=principal.scope_owner,
        register=body.output.registration,
        device=body.device,
        reference=body.reference,
    )
    # Compiled and checked before the write session's first statement (which takes the lock).
    checked = await to_thread.run_sync(
        functools.partial(
            service.check_job, request, registry=RegistryConfig.from_settings(settings)
        )
    )
    # The callback's host too, before the write transaction.
    hooks = service.check_job_callback(
        service.JobHooks(
            outbound=outbound,
            local_secret=local_webhook_secret(settings),
            callback=body.callback.model_dump() if body.callback else None,
        )
    )
    job = await in_write_thread(
        service.create_job,
        session,
        checked,
        max_attempts=settings.max_attempts,
        max_active=settings.max_active_jobs_per_owner,
        hooks=hooks,
    )
    if dispatcher is not None:  # sent once the job is committed (after the response)
        background.add_task(dispatch.dispatch_job, database, dispatcher, job.id)
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobPublic.of(job)


@router.get("")
def list_jobs(
    principal: ReadPrincipal,
    session: ReadSession,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    status: Annotated[
        Literal["queued", "running", "succeeded", "failed", "cancelled"] | None, Query()
    ] = None,
) -> JobsPublic:
    items, count = service.list_jobs(
        session, offset=offset, limit=limit, status=status, owner=principal.scope_owner
    )
    return JobsPublic(data=[JobPublic.of(j) for j in items], count=count)


@router.get("/{job_id}")
def get_job(job_id: str, principal: ReadPrincipal, session: ReadSession) -> JobPublic:
    return JobPublic.of(service.get_job(session, job_id, owner=principal.scope_owner))


@router.post("/{job_id}/cancel", responses={409: problem("the job already finished")})
async def cancel_job(
    job_id: str,
    principal: WritePrincipal,
    session: WriteSession,
    settings: SettingsDep,
    database: DatabaseDep,
    dispatcher: DispatcherDep,
    background: BackgroundTasks,
) -> JobPublic:
    """Cancel a queued job at once; a running one stops at its next checkpoint of progress."""
    job = await in_write_thread(service.cancel_job, session, job_id, owner=principal.scope_owner)
    if dispatcher is not None and job.status == "running":
        background.add_task(
            _revoke_later, database, dispatcher, job_id, grace=3 * settings.heartbeat_seconds + 2
        )
    return JobPublic.of(job)


@router.post(
    "/{job_id}/registry-retry",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        200: {"description": "the job is registered already: nothing to retry"},
        409: problem("the job has not succeeded, or registers nothing (no output.register)"),
    },
)
async def retry_registration(
    job_id: str,
    response: Response,
    principal: WritePrincipal,
    session: WriteSession,
    dispatcher: DispatcherDep,
    background: BackgroundTasks,
) -> JobPublic:
    """Register a succeeded job's result again after `result.registry.error`: 202 while the
    retry waits for or runs in a worker (`stage`: `registry-retry`, then `registering`; asking
    again answers the same), 200 once registered. Never a second version: the job's version is
    first looked up by its `graft.job_id` tag. `POST /cancel` stops a retry."""
    answer = await in_write_thread(
        registry_retry.request_registry_retry, session, job_id, owner=principal.scope_owner
    )
    if answer.state is registry_retry.RetryState.registered:
        response.status_code = status.HTTP_200_OK
    elif dispatcher is not None and answer.waiting:
        background.add_task(dispatch.dispatch_registration, dispatcher, job_id)
    return JobPublic.of(answer.job)


async def _revoke_later(
    database: DatabaseDep, dispatcher: dispatch.Dispatcher, job_id: str, *, grace: float
) -> None:
    """The cancel's fallback: a worker that did not notice the flag within a few heartbeats
    has its task terminated."""
    await anyio.sleep(grace)
    await anyio.to_thread.run_sync(dispatch.revoke_if_still_running, database, dispatcher, job_id)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "the job's events"},
        204: {"description": "Last-Event-ID is the terminal event: nothing more will come"},
    },
)
async def job_events(
    job_id: str,
    principal: ReadPrincipal,
    database: DatabaseDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(alias="last-event-id")] = None,
) -> Response:
    """Server-Sent Events: `progress` and `status`, replayed from after `Last-Event-ID` (from
    the start without it); the stream ends after the terminal status."""
    after = _event_id(last_event_id)
    owner = principal.scope_owner
    more = await to_thread.run_sync(
        lambda: events_service.open_stream(database, job_id, owner=owner, last_event_id=after)
    )
    if not more:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    events = events_service.follow_events(
        database, job_id, after=after, poll_seconds=settings.events_poll_seconds
    )
    return StreamingResponse(
        _sse(events),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get("/{job_id}/deliveries")
def list_deliveries(
    job_id: str, principal: ReadPrincipal, session: ReadSession
) -> DeliveriesPublic:
    """The job's webhooks and every attempt to deliver them."""
    service.get_job(session, job_id, owner=principal.scope_owner)
    items = webhooks_service.deliveries_for_job(session, job_id)
    return DeliveriesPublic(
        data=[DeliveryPublic.model_validate(d) for d in items], count=len(items)
    )


@router.post(
    "/{job_id}/deliveries/{delivery_id}/retry",
    responses={404: problem("no such job or delivery"), 409: problem("delivered already")},
)
async def retry_delivery(
    job_id: str, delivery_id: str, principal: WritePrincipal, session: WriteSession
) -> DeliveryPublic:
    """Send a failed (or still pending) webhook again now, under its same `webhook-id`."""

    def retry() -> DeliveryPublic:
        service.get_job(session, job_id, owner=principal.scope_owner)
        webhooks_service.retry_delivery(session, job_id, delivery_id)
        found = webhooks_service.deliveries_for_job(session, job_id)
        return DeliveryPublic.model_validate(next(d for d in found if d["id"] == delivery_id))

    return await in_write_thread(retry)


def _event_id(value: str | None) -> int:
    if value is None or not value.strip():
        return 0
    # ASCII digits only, and within SQLite's integers: str.isdigit() admits '²', which int()
    # refuses, and 2**70 overflows the query's parameter.
    if not re.fullmatch(r"[0-9]{1,18}", value.strip()):
        raise BadRequestError("Last-Event-ID must be an event id from this stream")
    return int(value)


async def _sse(events: AsyncIterator[events_service.StoredEvent | None]) -> AsyncIterator[str]:
    async for event in events:
        if event is None:
            yield ": keep-alive\n\n"
            continue
        data = json.dumps(event.data, separators=(",", ":"))
        yield f"id: {event.seq}\nevent: {event.event}\ndata: {data}\n\n"


@router.get("/{job_id}/artifacts")
def list_artifacts(job_id: str, principal: ReadPrincipal, session: ReadSession) -> ArtifactsPublic:
    job = service.get_job(session, job_id, owner=principal.scope_owner)
    return ArtifactsPublic(
        data=[ArtifactPublic.of(a) for a in job.artifacts], count=len(job.artifacts)
    )


@download_route(
    router,
    "/{job_id}/report",
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}, "text/plain": {}}}},
)
def get_report(
    job_id: str,
    request: Request,
    principal: ReadPrincipal,
    session: ReadSession,
    store: StoreDep,
    format: Annotated[Literal["json", "text", "groups"], Query()] = "json",
) -> Response:
    """The report (schema graft.report/v1), its grouped human form with `?format=text`, or
    with `?format=groups` its keys grouped as data (what the text form and web app show)."""
    if format == "groups":
        # Imported here: the report module pulls in the readers, which the API never needs.
        from app.engine.report import group_report

        report = service.read_report(session, store, job_id, owner=principal.scope_owner)
        return JSONResponse(group_report(report))
    artifact = service.get_artifact(
        session,
        job_id,
        "report" if format == "json" else "report-text",
        owner=principal.scope_owner,
    )
    return blob_response(store, artifact, head=request.method == "HEAD")


@download_route(
    router,
    "/{job_id}/attestation",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/vnd.in-toto+json": {},
                "application/vnd.dsse.envelope.v1+json": {},
            },
            "description": "the in-toto statement of the weights (a DSSE envelope when the "
            "server signs: GRAFT_SIGNING_KEY)",
        },
        404: problem("no such job, or it has not succeeded (yet)"),
    },
)
def get_attestation(
    job_id: str, request: Request, principal: ReadPrincipal, session: ReadSession, store: StoreDep
) -> Response:
    """The weights' attestation (SPEC §3.3); `graft verify` checks the downloaded weights
    against it (with `--public-key` for a signed one)."""
    artifact = service.get_artifact(session, job_id, "attestation", owner=principal.scope_owner)
    return blob_response(store, artifact, head=request.method == "HEAD")


@download_route(router, "/{job_id}/manifest", response_class=FileResponse)
def get_manifest(
    job_id: str, request: Request, principal: ReadPrincipal, session: ReadSession, store: StoreDep
) -> Response:
    artifact = service.get_artifact(session, job_id, "manifest", owner=principal.scope_owner)
    return blob_response(store, artifact, head=request.method == "HEAD")


@download_route(
    router,
    "/{job_id}/weights",
    response_class=FileResponse,
    responses={
        206: {"description": "a byte range (HTTP Range)"},
        307: {"description": "the presigned URL to fetch it from (GRAFT_PRESIGNED_DOWNLOADS)"},
        416: problem("an unsatisfiable range, or more than GRAFT_MAX_RANGES ranges"),
    },
)
def get_weights(
    job_id: str,
    request: Request,
    principal: ReadPrincipal,
    session: ReadSession,
    store: StoreDep,
    settings: SettingsDep,
    range_: Annotated[str | None, Header(alias="range", include_in_schema=False)] = None,
) -> Response:
    """The converted weights; supports `Range: bytes=…` (at most GRAFT_MAX_RANGES ranges)."""
    artifact = service.get_artifact(session, job_id, "weights", owner=principal.scope_owner)
    if range_ is not None and range_.count(",") >= settings.max_ranges:
        # Counted before anything is parsed: thousands of ranges cost one scan of the header.
        raise TooManyRangesError(
            f"the Range header asks for {range_.count(',') + 1} ranges; at most "
            f"{settings.max_ranges} are served in one response",
            headers={"Content-Range": f"bytes */{artifact.size}"},
        )
    return blob_response(
        store,
        artifact,
        range_header=range_,
        attachment=True,
        presigned=settings.presigned_downloads,
        head=request.method == "HEAD",
        filename=download_filename(session, artifact.job, artifact),
    )
