"""/v1/uploads: resumable uploads, the tus 1.0 protocol (SPEC §5.3).

Core, creation, termination and checksum (sha256). ``POST`` creates an upload of
``Upload-Length`` bytes (``Upload-Metadata`` may name its ``filename`` and weights ``entry``)
and answers its URL in ``Location``; ``PATCH`` appends a part at ``Upload-Offset``; ``HEAD``
says how far it got; ``DELETE`` drops it. The PATCH that completes the upload makes the
checkpoint record exactly as ``POST /v1/checkpoints`` does and answers its id in
``Graft-Checkpoint`` (``Graft-Checkpoint-Created: true`` when the record is new, ``false``
when the same bytes were uploaded before); ``GET /v1/uploads/{id}`` then returns the record,
the same JSON ``POST /v1/checkpoints`` answers, under ``checkpoint``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from anyio import to_thread
from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel

from app.api.app_context import app_context
from app.api.deps import (
    InspectorDep,
    ReadPrincipal,
    ReadSession,
    SettingsDep,
    StoreDep,
    WritePrincipal,
    WriteSession,
)
from app.api.errors import problem
from app.api.schemas import CheckpointPublic
from app.api.tus import (
    TUS_EXTENSIONS,
    check_part_request,
    check_tus_resumable,
    encode_metadata,
    header_int,
    receive_part,
    tus_headers,
)
from app.api.uploads import safe_filename
from app.services import checkpoints as checkpoints_service
from app.services import uploads as service
from app.services.errors import BadRequestError, NotFoundError
from app.services.uploads.errors import TUS_VERSION

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])


class UploadPublic(BaseModel):
    """A resumable upload: how far it got, and once complete, its checkpoint record."""

    id: str
    offset: int
    length: int
    metadata: dict[str, str]
    expires_at: datetime
    complete: bool
    created: bool | None = None
    checkpoint: CheckpointPublic | None = None


@router.options("", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def discover(settings: SettingsDep) -> Response:
    """The tus capabilities: version, extensions, checksum algorithm, largest upload."""
    return Response(
        status_code=status.HTTP_204_NO_CONTENT,
        headers={
            "Tus-Resumable": TUS_VERSION,
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": TUS_EXTENSIONS,
            "Tus-Checksum-Algorithm": "sha256",
            "Tus-Max-Size": str(settings.max_upload_bytes),
        },
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_class=Response,
    responses={
        201: {"description": "created: its URL is in Location", "content": {}},
        400: problem("no Upload-Length, or bad Upload-Metadata"),
        412: problem("Tus-Resumable is not 1.0.0"),
        413: problem("Upload-Length over GRAFT_MAX_UPLOAD_BYTES"),
        429: problem("too many unfinished uploads of yours"),
    },
)
async def create(request: Request, principal: WritePrincipal, settings: SettingsDep) -> Response:
    """Create an upload (tus creation); its URL is in ``Location``."""
    check_tus_resumable(request)
    if "upload-defer-length" in request.headers:
        raise BadRequestError("Upload-Defer-Length is not supported: send Upload-Length")
    length = header_int(request, "upload-length")
    metadata = service.parse_metadata(request.headers.get("upload-metadata"))
    if "filename" in metadata:
        metadata["filename"] = safe_filename(metadata["filename"])
    info = await to_thread.run_sync(
        lambda: service.create_upload(
            app_context(request).resumable,
            owner=principal.owner,
            length=length,
            metadata=metadata,
            max_bytes=settings.max_upload_bytes,
        )
    )
    location = str(request.url_for("upload_status", upload_id=info.id))
    return Response(
        status_code=status.HTTP_201_CREATED,
        headers=tus_headers(Location=location, **{"Upload-Offset": "0"}),
    )


@router.head(
    "/{upload_id}",
    response_class=Response,
    responses={
        200: {"description": "Upload-Offset and Upload-Length in headers", "content": {}},
        404: problem("no such upload"),
        412: problem("Tus-Resumable is not 1.0.0"),
    },
)
async def head(upload_id: str, request: Request, principal: ReadPrincipal) -> Response:
    """How many bytes the upload holds (``Upload-Offset``) of ``Upload-Length``."""
    check_tus_resumable(request)
    uploads = app_context(request).resumable
    info = await to_thread.run_sync(lambda: uploads.get(upload_id, owner=principal.scope_owner))
    headers = tus_headers(
        **{
            "Upload-Offset": str(info.offset),
            "Upload-Length": str(info.length),
            "Cache-Control": "no-store",
        }
    )
    if info.metadata:
        headers["Upload-Metadata"] = encode_metadata(info.metadata)
    if info.checkpoint_id:
        headers["Graft-Checkpoint"] = info.checkpoint_id
    return Response(status_code=status.HTTP_200_OK, headers=headers)


@router.patch(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={
        404: problem("no such upload"),
        408: problem("the client stopped sending, or sends too slowly"),
        409: problem("Upload-Offset is not the upload's offset, or another PATCH runs"),
        412: problem("Tus-Resumable is not 1.0.0"),
        413: problem("the part runs past Upload-Length"),
        415: problem("the body is not application/offset+octet-stream"),
        422: problem("the complete file is not a safe, readable checkpoint"),
        429: problem("too many uploads at once; see Retry-After"),
        460: problem("the part does not match its Upload-Checksum (discarded)"),
    },
)
async def append(
    upload_id: str,
    request: Request,
    principal: WritePrincipal,
    session: WriteSession,
    store: StoreDep,
    inspector: InspectorDep,
) -> Response:
    """Append a part at ``Upload-Offset``; the last part makes the checkpoint record."""
    check_tus_resumable(request)
    context = app_context(request)
    uploads = context.resumable
    checksum = service.parse_checksum(request.headers.get("upload-checksum"))
    info = await to_thread.run_sync(lambda: uploads.get(upload_id, owner=principal.owner))
    offset = check_part_request(request, info)
    headers = tus_headers()
    with context.uploads.claim(principal.owner), uploads.locked(upload_id):
        info = await to_thread.run_sync(lambda: uploads.get(upload_id, owner=principal.owner))
        writer = await to_thread.run_sync(
            lambda: service.begin_part(uploads, info, offset=offset, checksum=checksum)
        )
        body = await receive_part(request, writer, info)
        done = await service.finish_part(
            uploads, info, writer, checksum=checksum, intact=body.intact
        )
        if body.error is not None:
            raise body.error
        if done:
            checkpoint, created = await service.complete_upload(
                session, store, inspector, uploads, info, writer
            )
            headers["Graft-Checkpoint"] = str(checkpoint.id)
            headers["Graft-Checkpoint-Created"] = "true" if created else "false"
    headers["Upload-Offset"] = str(info.offset)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=headers)


@router.delete(
    "/{upload_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={404: problem("no such upload"), 412: problem("Tus-Resumable is not 1.0.0")},
)
async def terminate(upload_id: str, request: Request, principal: WritePrincipal) -> Response:
    """Drop the upload and its bytes (tus termination); a checkpoint it made stays."""
    check_tus_resumable(request)
    uploads = app_context(request).resumable
    await to_thread.run_sync(lambda: uploads.get(upload_id, owner=principal.owner))
    with uploads.locked(upload_id):
        await to_thread.run_sync(uploads.remove, upload_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT, headers=tus_headers())


@router.get("/{upload_id}", name="upload_status", responses={404: problem("no such upload")})
def upload_status(
    upload_id: str, request: Request, principal: ReadPrincipal, session: ReadSession
) -> UploadPublic:
    """The upload's progress; once complete, ``checkpoint`` is the record it made (the JSON
    ``POST /v1/checkpoints`` answers)."""
    uploads = app_context(request).resumable
    info = uploads.get(upload_id, owner=principal.scope_owner)
    checkpoint = None
    if info.checkpoint_id is not None:
        try:
            record = checkpoints_service.get_checkpoint(
                session, info.checkpoint_id, owner=principal.scope_owner
            )
        except NotFoundError:  # deleted since
            pass
        else:
            checkpoint = CheckpointPublic.of(record)
    return UploadPublic(
        id=info.id,
        offset=info.offset,
        length=info.length,
        metadata=info.metadata,
        expires_at=datetime.fromtimestamp(uploads.expires_at(info), UTC),
        complete=info.complete,
        created=info.created_checkpoint if info.complete else None,
        checkpoint=checkpoint,
    )
