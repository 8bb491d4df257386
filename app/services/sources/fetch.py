"""A job's source by reference: fetched, inspected in the sandbox, recorded as a checkpoint.

The worker calls :func:`fetch_source` before the conversion. The source is streamed through
the outbound guard into a work folder (sha256 and the size cap as it streams), inspected in a
sandbox child exactly as an upload is, and published as the job owner's checkpoint: the same
bytes are stored once, however often the reference is fetched (an alias moves, so a
reference is fetched again for every job).
"""

from __future__ import annotations

import logging
import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from app.db.session import Database
from app.engine.errors import UnreadableCheckpointError
from app.errors import GraftError
from app.net.outbound import OutboundRefusedError
from app.registry.download import DownloadedFile
from app.registry.errors import RegistryError
from app.registry.mlflow import MlflowClient
from app.sandbox.runner import Limits, run_sandboxed
from app.services.checkpoints import checkpoint_files, publish_checkpoint
from app.services.errors import InvalidJobError, ServiceError
from app.services.sources.http import fetch_url
from app.services.sources.references import RegistryConfig, SourceRef
from app.services.sources.s3 import fetch_s3
from app.storage import BlobStore

__all__ = ["FetchedSource", "fetch_source", "registry_failure"]

logger = logging.getLogger(__name__)


def registry_failure(exc: GraftError, what: str) -> GraftError:
    """The job's error for a failure of the guard, the registry or a source host: the same
    error, saying what was being done (and whether running the job again may succeed)."""
    hint = " (safe to retry: submit the job again)" if getattr(exc, "retryable", False) else ""
    return exc.prefixed(what, suffix=hint)


@dataclass(frozen=True)
class FetchedSource:
    """A fetched source, recorded.

    Attributes:
        checkpoint_id: the owner's checkpoint record (existing when the bytes were known).
        sha256: the checkpoint's identity.
        files: ``(name, sha256)`` of its blobs, in order.
        version: the model version a ``models:/`` reference resolved to.
    """

    checkpoint_id: str
    sha256: str
    files: list[tuple[str, str]]
    version: str | None


def _download(ref: SourceRef, folder: Path, config: RegistryConfig) -> tuple[list[Any], str | None]:
    if ref.uri.startswith("models:"):
        config.require_mlflow("a models:/ source")
        with MlflowClient(
            config.tracking_uri, policy=config.policy(), token=config.token
        ) as client:
            fetched = client.fetch_model(ref.uri, folder, max_bytes=config.max_bytes, path=ref.path)
        return list(fetched.files), fetched.version.version
    if ref.uri.startswith("runs:"):
        config.require_mlflow("a runs:/ source")
        with MlflowClient(
            config.tracking_uri, policy=config.policy(), token=config.token
        ) as client:
            return client.fetch_run(
                ref.uri, folder, max_bytes=config.max_bytes, path=ref.path
            ), None
    if ref.uri.startswith("s3://"):
        try:
            return [fetch_s3(ref.uri, folder, config=config.s3, max_bytes=config.max_bytes)], None
        except PermissionError as exc:
            raise OutboundRefusedError(str(exc), url=ref.uri) from exc
    name = posixpath.basename(httpx.URL(ref.uri).path) or "source"
    if name.startswith("."):
        name = "source" + name
    file = fetch_url(ref.uri, folder / name, max_bytes=config.max_bytes, policy=config.policy())
    return [file], None


def _inspect(files: list[DownloadedFile], limits: Limits, max_tensors: int | None) -> Any:
    try:
        answer = run_sandboxed(
            "app.services.inspection:inspect_in_child",
            {"files": [str(f.path) for f in files], "entry": "auto", "max_tensors": max_tensors},
            limits=limits,
            preload=("app.engine.readers",),
        )
    except GraftError as exc:
        raise UnreadableCheckpointError(f"inspection failed: {exc.message}") from exc
    if not answer.get("ok"):
        raise GraftError.from_payload(
            {**answer, "message": f"the fetched source was refused: {answer.get('message')}"},
            default=UnreadableCheckpointError.type,
        )
    return answer["result"]


def fetch_source(
    ref: SourceRef,
    *,
    owner: str,
    work: Path,
    database: Database,
    store: BlobStore,
    config: RegistryConfig,
    inspect_limits: Limits,
    max_tensors: int | None = None,
) -> FetchedSource:
    """Fetch, inspect and record a job's source.

    Args:
        ref: the reference.
        owner: the job's owner, who owns the checkpoint record.
        work: the job's work folder (the download lands in ``work/fetched``).
        database: where the checkpoint is recorded (its own short transaction).
        store: where its blobs go.
        config: the registry, the allow list and the size cap.
        inspect_limits: the inspection child's sandbox limits.
        max_tensors: most tensors a checkpoint may hold.

    Returns:
        The recorded checkpoint.

    Raises:
        GraftError: ``outbound-refused``, ``registry-unavailable`` / ``source-unavailable``
            (safe to retry), ``not-found``, ``invalid-job``, ``too-large``,
            ``unsafe-checkpoint`` (a pickled ``nn.Module``, as ``mlflow.pytorch`` saves),
            ``unreadable-checkpoint``.
    """
    folder = work / "fetched"
    folder.mkdir()
    try:
        files, version = _download(ref, folder, config)
    except (OutboundRefusedError, RegistryError, ServiceError, InvalidJobError) as exc:
        raise registry_failure(exc, f"fetching {ref.uri}") from exc
    summary = _inspect(files, inspect_limits, max_tensors)
    with database.transaction() as session:
        checkpoint, created = publish_checkpoint(session, store, files, summary, owner=owner)
        fetched = FetchedSource(
            checkpoint_id=checkpoint.id,
            sha256=checkpoint.sha256,
            files=checkpoint_files(checkpoint),
            version=version,
        )
    logger.info(
        "source %s -> checkpoint %s (%s)",
        ref.uri,
        fetched.checkpoint_id,
        "new" if created else "already stored",
    )
    return fetched
