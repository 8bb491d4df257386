"""Checkpoint use cases: register an upload, read records, delete."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from anyio import to_thread
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.models import LOCAL_OWNER, Checkpoint, CheckpointFile
from app.db.repositories import CheckpointRepository, TensorRow
from app.services.errors import ConflictError, NotFoundError
from app.services.inspection import tensor_pages
from app.services.inspector import InspectorPool
from app.storage import BlobStore, PartsUpload, StagedFile

__all__ = [
    "EarlyInspection",
    "checkpoint_digest",
    "checkpoint_files",
    "delete_checkpoint",
    "get_checkpoint",
    "list_checkpoints",
    "list_tensors",
    "publish_checkpoint",
    "register_upload",
]


class StoredFile(Protocol):
    """A closed local file whose sha256 and size are known (a staged upload, a download)."""

    @property
    def path(self) -> Path: ...

    @property
    def sha256(self) -> str: ...

    @property
    def size(self) -> int: ...

    @property
    def name(self) -> str:
        """The file's name in its checkpoint (never used as a path by the store)."""
        ...


def checkpoint_files(checkpoint: Checkpoint) -> list[tuple[str, str]]:
    """A stored checkpoint's ``(name, sha256)`` files."""
    return [(f.filename, f.sha256) for f in checkpoint.files]


def checkpoint_digest(files: list[tuple[str, str]]) -> str:
    """The identity of a checkpoint: a file's sha256, or for a set, that of its sorted
    ``"<sha256>  <name>"`` lines (the ``sha256sum`` format)."""
    if len(files) == 1:
        return files[0][1]
    lines = "".join(f"{sha}  {name}\n" for name, sha in sorted(files))
    return hashlib.sha256(lines.encode()).hexdigest()


def _display_name(names: list[str]) -> str:
    for name in names:
        if name.endswith(".index.json"):
            return name
    return names[0]


def _publish_file(store: BlobStore, staged: StoredFile) -> None:
    """Move one file into the store: the file itself, or, for a resumable upload whose
    bytes the store already holds in parts (``assembled``), those parts."""
    assembled = getattr(staged, "assembled", None)
    if isinstance(assembled, PartsUpload):
        store.publish_parts(assembled, staged.sha256, staged.size)
        staged.path.unlink(missing_ok=True)
    else:
        store.publish(staged.path, staged.sha256)


def publish_checkpoint(
    session: Session,
    store: BlobStore,
    files: Sequence[StoredFile],
    summary: dict[str, Any],
    *,
    owner: str = LOCAL_OWNER,
) -> tuple[Checkpoint, bool]:
    """Publish inspected, staged files and insert the record (or return the owner's existing
    one). Blobs are published before the record commits; a crash in between leaves blobs no
    record references, which the start-up sweep collects (``app.services.bootstrap``).

    Returns:
        ``(checkpoint, created)``.
    """
    # Blobs first, before the transaction's first statement takes the write lock: publishing
    # fsyncs, and content-addressed blobs are idempotent (a duplicate publishes nothing new).
    for staged in files:
        _publish_file(store, staged)
    pages = summary.get("tensor_pages")
    count = summary.get("tensor_count")
    if pages is None:  # a summary inspected unpaged (a source fetched by a worker)
        pages, count = tensor_pages(summary.get("tensors", [])), len(summary.get("tensors", []))
    repo = CheckpointRepository(session)
    named = [(f.name, f.sha256) for f in files]
    digest = checkpoint_digest(named)
    existing = repo.get_by_sha256(digest, owner=owner)
    if existing is not None:
        return existing, False
    totals = summary.get("totals", {})
    checkpoint = Checkpoint(
        owner=owner,
        sha256=digest,
        filename=_display_name([n for n, _ in named]),
        size=sum(f.size for f in files),
        format=summary["format"],
        entry=summary.get("entry"),
        stripped_prefix=summary.get("stripped_prefix"),
        tensors=int(totals.get("tensors", count)),
        elements=int(totals.get("elements", 0)),
        bytes=int(totals.get("bytes", 0)),
        by_dtype=totals.get("by_dtype", {}),
        ignored=summary.get("ignored") or [],
        files=[
            CheckpointFile(position=i, filename=f.name, sha256=f.sha256, size=f.size)
            for i, f in enumerate(files)
        ],
    )
    try:
        with session.begin_nested():
            repo.add(checkpoint, pages)
    except IntegrityError:
        # A concurrent upload of the same bytes won (PostgreSQL; SQLite serialises writers).
        existing = repo.get_by_sha256(digest, owner=owner)
        if existing is None:
            raise
        return existing, False
    return checkpoint, True


class EarlyInspection:
    """A safetensors upload's header inspected while the rest of its body still arrives.

    A safetensors file is described by its header alone (names, dtypes, shapes, offsets),
    and the header is the first ``8 + N`` bytes. Once they are in, :meth:`start` writes them
    to a probe file sized like the announced upload (sparse: the data is a hole) and hands
    it to the same sandboxed inspection as any upload, on its own task; :meth:`summary`
    gives that answer when the upload that arrived is the one announced (one file, its
    size), else ``None`` and the upload is inspected as usual. Nothing of the header is
    parsed in this process beyond its length.

    Args:
        inspector: the sandboxed inspection pool.
        workdir: the upload's private folder (the probe goes there).
        entry: the weights entry to use (SPEC §1).
    """

    def __init__(self, inspector: InspectorPool, workdir: Path, *, entry: str = "auto") -> None:
        self.inspector = inspector
        self.workdir = workdir
        self.entry = entry
        self.total: int | None = None
        self._task: asyncio.Task[dict[str, Any]] | None = None

    def start(self, header: bytes, total: int, name: str) -> None:
        """Inspect ``header`` as the start of a ``total``-byte file named ``name``."""
        if self._task is not None:
            return
        probe = self.workdir / "header-probe"
        with probe.open("xb") as fh:
            fh.write(header)
            fh.truncate(total)
        self.total = total
        self._task = asyncio.get_running_loop().create_task(
            self.inspector.inspect([probe], names=[name], entry=self.entry, paged=True)
        )
        # A task cancelled or refused and never awaited must not log "never retrieved".
        self._task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def summary(self, files: Sequence[StoredFile]) -> dict[str, Any] | None:
        """The early answer, when ``files`` is the one upload it was taken for; ``None``
        otherwise, or when it refused the probe (the real file then says why)."""
        if self._task is None:
            return None
        if len(files) != 1 or files[0].size != self.total:
            self.cancel()
            return None
        try:
            return await self._task
        except Exception:  # refused: the full inspection gives the real file's own answer
            return None

    def cancel(self) -> None:
        """Stop an inspection still running (an upload that failed or changed)."""
        if self._task is not None and not self._task.done():
            self._task.cancel()


async def register_upload(
    session: Session,
    store: BlobStore,
    inspector: InspectorPool,
    files: list[StagedFile],
    *,
    owner: str,
    entry: str = "auto",
    early: EarlyInspection | None = None,
) -> tuple[Checkpoint, bool]:
    """Inspect staged files in a child process, then publish blobs and the record.

    Args:
        files: closed staged files (names as uploaded, sha256 and size known).
        owner: who the record belongs to.
        entry: the weights entry to use (SPEC §1).
        early: the header inspected while the body arrived, used when it matches.

    Returns:
        ``(checkpoint, created)``; identical bytes from the same owner give back the
        existing record.

    Raises:
        GraftError: the engine refused the file; nothing is stored.
    """
    summary = await early.summary(files) if early is not None else None
    if summary is None:
        summary = await inspector.inspect(
            [f.path for f in files], names=[f.name for f in files], entry=entry, paged=True
        )
    return await to_thread.run_sync(
        lambda: publish_checkpoint(session, store, files, summary, owner=owner)
    )


def get_checkpoint(session: Session, checkpoint_id: str, *, owner: str | None) -> Checkpoint:
    """One checkpoint; another owner's answers as if it did not exist."""
    checkpoint = CheckpointRepository(session).get(checkpoint_id, owner=owner)
    if checkpoint is None:
        raise NotFoundError(f"no checkpoint with id {checkpoint_id!r}")
    return checkpoint


def list_checkpoints(
    session: Session, *, offset: int, limit: int, owner: str | None, sha256: str | None = None
) -> tuple[list[Checkpoint], int]:
    """A page of checkpoints, newest first; ``sha256`` keeps only that content's record(s)."""
    return CheckpointRepository(session).page(
        offset=offset, limit=limit, owner=owner, sha256=sha256.lower() if sha256 else None
    )


def list_tensors(
    session: Session, checkpoint_id: str, *, offset: int, limit: int, owner: str | None
) -> tuple[list[TensorRow], int]:
    get_checkpoint(session, checkpoint_id, owner=owner)
    return CheckpointRepository(session).tensors(checkpoint_id, offset=offset, limit=limit)


def delete_checkpoint(session: Session, checkpoint_id: str, *, owner: str | None) -> list[str]:
    """Delete a record. Its blobs may be shared, so they are not deleted here: once this
    commits, hand the returned digests to ``maintenance.BlobCollector``.

    Returns:
        The digests of the checkpoint's files.

    Raises:
        ConflictError: a queued or running job uses it.
    """
    repo = CheckpointRepository(session)
    checkpoint = get_checkpoint(session, checkpoint_id, owner=owner)
    if repo.in_use(checkpoint_id):
        raise ConflictError(
            f"checkpoint {checkpoint_id} is used by a queued or running job; "
            "cancel the job or wait for it to finish",
        )
    digests = [f.sha256 for f in checkpoint.files]
    repo.delete(checkpoint)
    return digests
