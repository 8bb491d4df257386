"""The job runner: claim, heartbeat, convert, publish, complete.

A worker claims one job with one UPDATE, then renews its lease from a heartbeat thread while
the engine runs in the main thread. Progress and stage go to the database with each
heartbeat; a cancel request or a lost lease is noticed there and stops the engine at its next
progress call. Artifacts are published to the blob store first (atomic, content-addressed),
then the job is completed and its artifact rows written in one transaction, and only while
this worker still holds the lease, so a job completes exactly once even if a worker thought
dead comes back.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.db.base import utcnow
from app.db.models import Artifact, JobStatus
from app.db.repositories import ArtifactRepository, CheckpointRepository, JobRepository
from app.db.session import Database
from app.storage import BlobStore

__all__ = ["JobRunner", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; anything else as given."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class _Abort(BaseException):
    """Raised inside the engine's progress callback to stop the conversion."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason  # cancelled | lease-lost | stopping


@dataclass
class _State:
    stage: str = "preparing"
    progress: float = 0.0
    abort: str | None = None
    dirty: bool = True
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class _Spec:
    job_id: str
    source_files: list[tuple[str, str]]
    target_kind: str
    target_files: list[tuple[str, str]]
    target_spec: dict[str, Any] | None
    recipe: dict[str, Any] | None
    output_format: str
    output_dtype: str | None
    dry_run: bool


_MEDIA = {"json": "application/json", "text": "text/plain; charset=utf-8"}


class JobRunner:
    """Runs jobs from the database until told to stop.

    Args:
        database: the shared database.
        store: the shared blob store.
        lease_seconds: how long a claim lasts without a heartbeat.
        heartbeat_seconds: how often the lease is renewed.
        poll_seconds: idle wait between claims.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        stage_delay: TEST ONLY (``GRAFT_TEST_STAGE_DELAY``): seconds to sleep between stages,
            so tests can kill a worker mid-job. Zero in production.
    """

    def __init__(
        self,
        database: Database,
        store: BlobStore,
        *,
        lease_seconds: float,
        heartbeat_seconds: float,
        poll_seconds: float,
        device: str,
        stage_delay: float = 0.0,
    ) -> None:
        self.database = database
        self.store = store
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.device = device
        self.stage_delay = stage_delay
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.stop_event = threading.Event()

    # -- loop --------------------------------------------------------------------------------

    def run(self) -> None:
        """Claim and run jobs until :attr:`stop_event` is set."""
        logger.info("worker %s started (device %s)", self.owner, self.device)
        while not self.stop_event.is_set():
            try:
                worked = self.run_once()
            except Exception:
                logger.exception("worker loop error; retrying")
                worked = False
            if not worked:
                self.stop_event.wait(self.poll_seconds)
        logger.info("worker %s stopped", self.owner)

    def run_once(self) -> bool:
        """Claim one job and run it. Returns whether there was one."""
        job_id = self._claim()
        if job_id is None:
            return False
        self._execute(job_id)
        return True

    def _claim(self) -> str | None:
        now = utcnow()
        with self.database.transaction(write=False) as session:
            if not JobRepository(session).has_work(now=now):
                return None
        with self.database.transaction() as session:
            repo = JobRepository(session)
            repo.cancel_abandoned(now=now)
            failed = repo.fail_exhausted(now=now)
            if failed:
                logger.warning("failed %d job(s) that exhausted their attempts", failed)
            return repo.claim(owner=self.owner, now=now, lease_seconds=self.lease_seconds)

    # -- one job -----------------------------------------------------------------------------

    def _load(self, job_id: str) -> _Spec:
        with self.database.transaction(write=False) as session:
            job = JobRepository(session).get(job_id)
            if job is None:
                raise LookupError(job_id)
            checkpoints = CheckpointRepository(session)

            def files(checkpoint_id: str | None, what: str) -> list[tuple[str, str]]:
                checkpoint = checkpoints.get(checkpoint_id) if checkpoint_id else None
                if checkpoint is None:
                    raise _Missing(f"the {what} checkpoint was deleted")
                return [(f.filename, f.sha256) for f in checkpoint.files]

            return _Spec(
                job_id=job.id,
                source_files=files(job.source_id, "source"),
                target_kind=job.target_kind,
                target_files=files(job.target_checkpoint_id, "target")
                if job.target_kind == "checkpoint"
                else [],
                target_spec=job.target_spec,
                recipe=job.recipe,
                output_format=job.output_format,
                output_dtype=job.output_dtype,
                dry_run=job.dry_run,
            )

    def _execute(self, job_id: str) -> None:
        state = _State()
        done = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, state, done), daemon=True)
        beat.start()
        status, error_type, message, ok, device = JobStatus.failed, None, None, None, None
        artifacts: list[dict[str, Any]] = []
        try:
            spec = self._load(job_id)
            device = resolve_device(self.device)
            with self.store.workdir() as work:
                ok, artifacts = self._convert(spec, work, state, device)
            if ok:
                status = JobStatus.succeeded
            else:
                error_type = "conversion-refused"
                message = "the recipe's policy refused the conversion; see the report"
        except _Abort as abort:
            if abort.reason == "lease-lost":
                logger.warning("job %s: lease lost; another worker owns it now", job_id)
                return
            if abort.reason == "stopping":
                self._release(job_id)
                return
            status, error_type, message = JobStatus.cancelled, None, None
        except _Missing as exc:
            error_type, message = "not-found", str(exc)
        except Exception as exc:
            from app.engine.errors import GraftError

            if isinstance(exc, GraftError):
                error_type, message = exc.type, exc.message
            else:
                logger.exception("job %s failed unexpectedly", job_id)
                error_type, message = "internal-error", f"{type(exc).__name__}: {exc}"
        finally:
            done.set()
            beat.join()
        self._finish(job_id, status, ok, error_type, message, device, artifacts)

    def _finish(
        self,
        job_id: str,
        status: JobStatus,
        ok: bool | None,
        error_type: str | None,
        message: str | None,
        device: str | None,
        artifacts: list[dict[str, Any]],
    ) -> None:
        with self.database.transaction() as session:
            held = JobRepository(session).finish(
                job_id,
                owner=self.owner,
                now=utcnow(),
                status=status,
                ok=ok,
                error_type=error_type,
                error_message=message,
                device=device,
            )
            if not held:
                logger.warning("job %s: lease lost before completion; result discarded", job_id)
                session.rollback()
                return
            repo = ArtifactRepository(session)
            for artifact in artifacts:
                repo.add(Artifact(job_id=job_id, **artifact))
        logger.info("job %s %s", job_id, status)

    def _release(self, job_id: str) -> None:
        with self.database.transaction() as session:
            JobRepository(session).release(job_id, owner=self.owner, now=utcnow())
        logger.info("job %s released back to the queue", job_id)

    # -- heartbeat and progress --------------------------------------------------------------

    def _heartbeat(self, job_id: str, state: _State, done: threading.Event) -> None:
        while True:
            with state.lock:
                stage, progress = state.stage, state.progress
            try:
                with self.database.transaction() as session:
                    held, cancel = JobRepository(session).heartbeat(
                        job_id,
                        owner=self.owner,
                        now=utcnow(),
                        lease_seconds=self.lease_seconds,
                        stage=stage,
                        progress=progress,
                    )
            except Exception:
                logger.exception("job %s: heartbeat failed; retrying", job_id)
            else:
                with state.lock:
                    if not held:
                        state.abort = "lease-lost"
                    elif cancel:
                        state.abort = state.abort or "cancelled"
            if self.stop_event.is_set():
                with state.lock:
                    state.abort = state.abort or "stopping"
            if done.wait(min(self.heartbeat_seconds, self.lease_seconds / 3)):
                return

    def _progress(self, state: _State) -> Callable[[str, float], None]:
        def report(stage: str, fraction: float) -> None:
            with state.lock:
                state.stage = stage
                state.progress = round(0.05 + 0.9 * max(0.0, min(1.0, fraction)), 4)
                abort = state.abort
            if abort:
                raise _Abort(abort)

        return report

    def _pause(self, state: _State, stage: str) -> None:
        """Mark a stage; with the test-only delay, sleep there while staying abortable."""
        with state.lock:
            state.stage = stage
        deadline = time.monotonic() + self.stage_delay
        while True:
            with state.lock:
                abort = state.abort
            if abort:
                raise _Abort(abort)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(0.05, remaining))

    # -- the conversion ----------------------------------------------------------------------

    def _materialize(self, files: list[tuple[str, str]], folder: Path) -> Path | list[Path]:
        folder.mkdir()
        paths = []
        for name, sha in files:
            self.store.link_into(sha, folder / name)
            paths.append(folder / name)
        return paths[0] if len(paths) == 1 else paths

    def _convert(
        self, spec: _Spec, work: Path, state: _State, device: str
    ) -> tuple[bool, list[dict[str, Any]]]:
        from app.engine.errors import InvalidTargetError
        from app.engine.pipeline import convert
        from app.engine.recipe import load_recipe
        from app.engine.report import render_text
        from app.engine.target import Target

        self._pause(state, "preparing")
        source = self._materialize(spec.source_files, work / "source")
        if spec.target_kind == "checkpoint":
            target = Target.from_checkpoint(self._materialize(spec.target_files, work / "target"))
        elif spec.target_kind == "skeleton":
            target = Target.from_skeleton(spec.target_spec or {})
        else:
            factory = getattr(Target, "from_architecture", None)
            if factory is None:
                raise InvalidTargetError("architecture targets are not available in this build")
            spec_ = spec.target_spec or {}
            target = factory(spec_["architecture"], **spec_.get("kwargs", {}))
        recipe = load_recipe(spec.recipe)
        suffix = "safetensors" if spec.output_format == "safetensors" else "pt"
        output = None if spec.dry_run else work / "out" / f"{spec.job_id}.{suffix}"
        if output is not None:
            output.parent.mkdir()
        with target:
            result = convert(
                source,
                target,
                recipe,
                output=output,
                fmt=spec.output_format,  # type: ignore[arg-type]
                dtype=spec.output_dtype,
                dry_run=spec.dry_run,
                device=device,
                progress=self._progress(state),
            )
        self._pause(state, "publishing")
        artifacts = [
            self._put("report", f"{spec.job_id}.report.json", _MEDIA["json"], _json(result.report)),
            self._put(
                "report-text",
                f"{spec.job_id}.report.txt",
                _MEDIA["text"],
                render_text(result.report).encode(),
            ),
            self._put(
                "manifest", f"{spec.job_id}.manifest.json", _MEDIA["json"], _json(result.manifest)
            ),
        ]
        if result.output is not None and not spec.dry_run:
            sha, size = self.store.ingest(Path(result.output))
            artifacts.append(
                {
                    "name": "weights",
                    "filename": Path(result.output).name,
                    "media_type": "application/octet-stream",
                    "sha256": sha,
                    "size": size,
                }
            )
        return bool(result.ok), artifacts

    def _put(self, name: str, filename: str, media_type: str, data: bytes) -> dict[str, Any]:
        sha, size = self.store.put_bytes(data)
        return {
            "name": name,
            "filename": filename,
            "media_type": media_type,
            "sha256": sha,
            "size": size,
        }


class _Missing(Exception):
    pass


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=False) + "\n").encode()
