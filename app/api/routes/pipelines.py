"""/v1/pipelines: named automations started by registry events (SPEC §5.1)."""

from __future__ import annotations

import functools
from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Body, Query, Response, status

from app.api.deps import (
    InspectorDep,
    ReadPrincipal,
    ReadSession,
    SettingsDep,
    WritePrincipal,
    WriteSession,
    check_target_architecture,
    in_write_thread,
    local_webhook_secret,
)
from app.api.errors import problem
from app.api.schemas import PipelinePublic, PipelinesPublic
from app.config import Settings
from app.services.inspector import InspectorPool
from app.services.sources.references import RegistryConfig
from app.services.webhooks import pipelines as service
from app.services.webhooks.pipelines import PipelineSpec

router = APIRouter(prefix="/v1/pipelines", tags=["pipelines"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        409: problem("the owner has a pipeline of that name"),
        422: problem(
            "registers into its own trigger model, an invalid target or recipe, or a "
            "callback host that is not allowed"
        ),
    },
)
async def create_pipeline(
    body: Annotated[PipelineSpec, Body()],
    response: Response,
    principal: WritePrincipal,
    session: WriteSession,
    settings: SettingsDep,
    inspector: InspectorDep,
) -> PipelinePublic:
    """Store a pipeline: each matching MLflow event starts one job as its owner."""
    await _check(body, settings, inspector)
    pipeline = await in_write_thread(
        service.create_pipeline,
        session,
        body,
        owner=principal.owner,
        checkpoint_owner=principal.scope_owner,
        local_secret=local_webhook_secret(settings),
    )
    response.headers["Location"] = f"/v1/pipelines/{pipeline.name}"
    return PipelinePublic.of(pipeline)


@router.get("")
def list_pipelines(
    principal: ReadPrincipal,
    session: ReadSession,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
) -> PipelinesPublic:
    items, count = service.list_pipelines(
        session, offset=offset, limit=limit, owner=principal.owner
    )
    return PipelinesPublic(data=[PipelinePublic.of(p) for p in items], count=count)


@router.get("/{name}")
def get_pipeline(name: str, principal: ReadPrincipal, session: ReadSession) -> PipelinePublic:
    return PipelinePublic.of(service.get_pipeline(session, name, owner=principal.owner))


@router.put("/{name}", responses={422: problem("as for POST, or the body names another")})
async def replace_pipeline(
    name: str,
    body: Annotated[PipelineSpec, Body()],
    principal: WritePrincipal,
    session: WriteSession,
    settings: SettingsDep,
    inspector: InspectorDep,
) -> PipelinePublic:
    """Replace a pipeline's definition."""
    await _check(body, settings, inspector)
    pipeline = await in_write_thread(
        service.replace_pipeline,
        session,
        name,
        body,
        owner=principal.owner,
        checkpoint_owner=principal.scope_owner,
        local_secret=local_webhook_secret(settings),
    )
    return PipelinePublic.of(pipeline)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_pipeline(name: str, principal: WritePrincipal, session: WriteSession) -> Response:
    await in_write_thread(service.delete_pipeline, session, name, owner=principal.owner)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


async def _check(spec: PipelineSpec, settings: Settings, inspector: InspectorPool) -> None:
    """The pipeline's checks that need no database, before the write session's first
    statement takes the lock (SPEC §5.3): its target's architecture bound in a child, then
    the rest in a thread."""
    await check_target_architecture(spec.target, inspector, settings)
    registry = RegistryConfig.from_settings(settings)
    await to_thread.run_sync(functools.partial(service.check_pipeline, spec, registry=registry))
