"""/v1/checkpoints: upload, list, read, tensors, delete."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Query, Request, Response, status

from app.api.app_context import app_context
from app.api.deps import (
    InspectorDep,
    ReadPrincipal,
    ReadSession,
    SettingsDep,
    StoreDep,
    WritePrincipal,
    WriteSession,
    in_write_thread,
)
from app.api.errors import problem
from app.api.schemas import CheckpointPublic, CheckpointsPublic, TensorPublic, TensorsPublic
from app.api.uploads import UploadPace, receive_upload
from app.services import checkpoints as service
from app.services import plans as plans_service

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"])

Offset = Annotated[int, Query(ge=0)]
Limit = Annotated[int, Query(ge=1, le=1000)]

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {
                            "type": "array",
                            "items": {"type": "string", "format": "binary"},
                            "description": "one checkpoint file, or every file of a sharded set",
                        }
                    },
                    "required": ["file"],
                },
                "example": {"file": ["resnet50.pth"]},
            },
            "application/octet-stream": {
                "schema": {"type": "string", "format": "binary"},
                "example": "<the bytes of model.safetensors>",
            },
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    openapi_extra=_UPLOAD_BODY,
    responses={
        200: {"model": CheckpointPublic, "description": "the same bytes were uploaded before"},
        400: problem("a malformed form or an unusable file name"),
        408: problem("the client stopped sending, or sends too slowly"),
        413: problem("larger than GRAFT_MAX_UPLOAD_BYTES, or too many tensors"),
        422: problem("unsafe or unreadable checkpoint, or one with no tensors"),
        429: problem("too many uploads at once (per owner or in all); see Retry-After"),
    },
)
async def upload_checkpoint(
    request: Request,
    response: Response,
    principal: WritePrincipal,
    session: WriteSession,
    store: StoreDep,
    inspector: InspectorDep,
    settings: SettingsDep,
    filename: Annotated[str | None, Query(description="file name for a raw body")] = None,
    entry: Annotated[str, Query(description="which dict holds the weights")] = "auto",
) -> CheckpointPublic:
    """Upload a checkpoint: multipart `file` part(s), or the raw body with `?filename=`."""
    slots = app_context(request).uploads
    pace = UploadPace.from_settings(settings)
    with store.workdir() as workdir:
        # A raw safetensors body's header is inspected while the rest of it arrives.
        early = service.EarlyInspection(inspector, workdir, entry=entry)
        try:
            # The slot covers receiving the body only: inspection has its own queue.
            with slots.claim(principal.owner):
                files = await receive_upload(
                    request, workdir, max_bytes=settings.max_upload_bytes, filename=filename,
                    pace=pace, on_header=early.start,
                )  # fmt: skip
            checkpoint, created = await service.register_upload(
                session, store, inspector, files, owner=principal.owner, entry=entry, early=early
            )
        finally:
            early.cancel()
    if not created:
        response.status_code = status.HTTP_200_OK
    return CheckpointPublic.of(checkpoint)


@router.get("")
def list_checkpoints(
    principal: ReadPrincipal,
    session: ReadSession,
    offset: Offset = 0,
    limit: Limit = 50,
    sha256: Annotated[
        str | None,
        Query(pattern="^[0-9a-fA-F]{64}$", description="only the upload with this content"),
    ] = None,
) -> CheckpointsPublic:
    """Your uploaded checkpoints, newest first; `?sha256=` finds one by content (clients
    check it before uploading)."""
    items, count = service.list_checkpoints(
        session, offset=offset, limit=limit, owner=principal.scope_owner, sha256=sha256
    )
    return CheckpointsPublic(data=[CheckpointPublic.of(c) for c in items], count=count)


@router.get("/{checkpoint_id}")
def get_checkpoint(
    checkpoint_id: str, principal: ReadPrincipal, session: ReadSession
) -> CheckpointPublic:
    return CheckpointPublic.of(
        service.get_checkpoint(session, checkpoint_id, owner=principal.scope_owner)
    )


@router.get("/{checkpoint_id}/tensors")
def list_tensors(
    checkpoint_id: str,
    principal: ReadPrincipal,
    session: ReadSession,
    offset: Offset = 0,
    limit: Limit = 100,
) -> TensorsPublic:
    """Key, shape, dtype and kind of each tensor, in checkpoint order."""
    rows, count = service.list_tensors(
        session, checkpoint_id, offset=offset, limit=limit, owner=principal.scope_owner
    )
    return TensorsPublic(
        data=[TensorPublic(key=t.key, shape=t.shape, dtype=t.dtype, kind=t.kind) for t in rows],
        count=count,
    )


@router.get("/{checkpoint_id}/inspect", responses={404: problem("no such checkpoint")})
async def inspect_checkpoint(
    checkpoint_id: str,
    principal: ReadPrincipal,
    session: ReadSession,
    store: StoreDep,
    inspector: InspectorDep,
    groups: Annotated[
        bool, Query(description="add `groups`: keys grouped per shape, dtype and kind")
    ] = False,
) -> dict[str, Any]:
    """The `graft.inspect/v1` document (read again in a sandboxed child)."""
    summary = await plans_service.inspect_checkpoint(
        session, store, inspector, checkpoint_id, owner=principal.scope_owner
    )
    if groups:
        from app.engine.keys import group_tensors

        summary["groups"] = group_tensors(summary["tensors"])
    return summary


@router.delete(
    "/{checkpoint_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={409: problem("a queued or running job uses it")},
)
async def delete_checkpoint(
    checkpoint_id: str,
    request: Request,
    principal: WritePrincipal,
    session: WriteSession,
    background: BackgroundTasks,
) -> None:
    """Delete a checkpoint; its blobs are freed once nothing else references them."""
    digests = await in_write_thread(
        service.delete_checkpoint, session, checkpoint_id, owner=principal.scope_owner
    )
    # Runs after the response, so after the session dependency has committed the delete.
    collector = app_context(request).blob_collector
    collector.add(digests)
    background.add_task(in_write_thread, collector.collect)
