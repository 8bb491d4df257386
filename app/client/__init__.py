"""Graft's Python client: the HTTP API (:class:`GraftClient`) and the receiving side's
helpers (:func:`apply_manifest`).

::

    from app.client import GraftClient

    with GraftClient("http://127.0.0.1:8000") as graft:
        source = graft.upload("resnet50.pth")          # skipped when the server has the bytes
        job = graft.create_job(source["id"], {"architecture": "graft_resnet", "kwargs": {}})
        for event in graft.events(job["id"]):          # Server-Sent Events, resumed on drops
            print(event.event, event.data)
        graft.download(job["id"], "weights", "out.safetensors")
"""

from __future__ import annotations

from app.client.errors import (
    ConflictError,
    GraftAPIError,
    GraftClientError,
    IdempotencyConflictError,
    IdempotencyInProgressError,
    InvalidRequestError,
    NotFoundError,
    UnauthorizedError,
)
from app.client.http import Event, GraftClient, file_sha256, upload_digest
from app.client.manifest import MANIFEST_SCHEMA, apply_manifest, keeps_eval
from app.client.tus import TusOptions

__all__ = [
    "MANIFEST_SCHEMA",
    "ConflictError",
    "Event",
    "GraftAPIError",
    "GraftClient",
    "GraftClientError",
    "IdempotencyConflictError",
    "IdempotencyInProgressError",
    "InvalidRequestError",
    "NotFoundError",
    "TusOptions",
    "UnauthorizedError",
    "apply_manifest",
    "file_sha256",
    "keeps_eval",
    "upload_digest",
]
