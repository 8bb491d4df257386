"""The job runner: claim, heartbeat, convert, publish, complete.

A worker claims one job with one UPDATE, then renews its lease from a heartbeat thread while
the engine runs in the main thread. Progress and stage go to the database with each
heartbeat; a cancel request or a lost lease is noticed there and stops the engine at its next
progress call. The conversion itself runs in a sandbox child (``app.services.sandbox``)
with resource limits; the worker only relays its progress and kills it on cancel. Artifacts
are published to the blob store first (atomic, content-addressed),
then the job is completed and its artifact rows written in one transaction, and only while
this worker still holds the lease, so a job completes exactly once even if a worker thought
dead comes back.
"""

from __future__ import annotations

import dataclasses
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
from app.db.models import Artifact, Checkpoint, JobStatus
from app.db.repositories import ArtifactRepository, CheckpointRepository, JobRepository
from app.db.session import Database
from app.engine.devices import resolve_device
from app.services.sandbox import Limits, SandboxError, run_sandboxed
from app.storage import BlobStore

__all__ = ["JobRunner", "resolve_device"]

logger = logging.getLogger(__name__)


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
    source_sha256: str | None = None


_MEDIA = {"json": "application/json", "text": "text/plain; charset=utf-8"}


class JobRunner:
    """Runs jobs from the database until told to stop.

    Args:
        database: the shared database.
        store: the shared blob store.
        lease_seconds: how long a claim lasts without a heartbeat.
        heartbeat_seconds: how often the lease is renewed.
        poll_seconds: idle wait between claims.
        device: ``auto``, ``cpu`` or ``cuda[:N]`` (see :func:`resolve_device`).
        stage_delay: TEST ONLY (``GRAFT_TEST_STAGE_DELAY``): seconds to sleep between stages,
            so tests can kill a worker mid-job. Zero in production.
        limits: the sandbox limits of each job's conversion child (default: none).
        worker_index: this worker's number among those on the host (GPU pinning).
        architectures: more architecture targets, ``name=module:factory,...``.
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
        limits: Limits | None = None,
        worker_index: int = 0,
        architectures: str = "",
    ) -> None:
        self.database = database
        self.store = store
        self.lease_seconds = lease_seconds
        self.heartbeat_seconds = heartbeat_seconds
        self.poll_seconds = poll_seconds
        self.device = device
        self.stage_delay = stage_delay
        self.limits = limits or Limits()
        self.worker_index = worker_index
        self.architectures = architectures
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

            def get(checkpoint_id: str | None, what: str) -> Checkpoint:
                checkpoint = checkpoints.get(checkpoint_id) if checkpoint_id else None
                if checkpoint is None:
                    raise _Missing(f"the {what} checkpoint was deleted")
                return checkpoint

            def files(checkpoint: Checkpoint) -> list[tuple[str, str]]:
                return [(f.filename, f.sha256) for f in checkpoint.files]

            source = get(job.source_id, "source")
            return _Spec(
                job_id=job.id,
                source_files=files(source),
                target_kind=job.target_kind,
                target_files=files(get(job.target_checkpoint_id, "target"))
                if job.target_kind == "checkpoint"
                else [],
                target_spec=job.target_spec,
                recipe=job.recipe,
                output_format=job.output_format,
                output_dtype=job.output_dtype,
                dry_run=job.dry_run,
                source_sha256=source.sha256,  # hashed at upload: the engine need not hash again
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
            device = resolve_device(self.device, index=self.worker_index)
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
        """Materialise the inputs, convert in a sandbox child, publish what it wrote."""
        self._pause(state, "preparing")
        source = self._materialize(spec.source_files, work / "source")
        target_files = (
            self._materialize(spec.target_files, work / "target")
            if spec.target_kind == "checkpoint"
            else None
        )
        out = work / "out"
        out.mkdir()
        suffix = "safetensors" if spec.output_format == "safetensors" else "pt"
        payload = {
            "source": _as_list(source),
            "target_kind": spec.target_kind,
            "target_files": _as_list(target_files) if target_files is not None else None,
            "target_spec": spec.target_spec,
            "recipe": spec.recipe,
            "output": None if spec.dry_run else str(out / f"{spec.job_id}.{suffix}"),
            "output_format": spec.output_format,
            "output_dtype": spec.output_dtype,
            "dry_run": spec.dry_run,
            "source_sha256": spec.source_sha256,
            "device": device,
            "reports": str(out),
            "architectures": self.architectures,
        }
        limits = self.limits
        if device.startswith("cuda"):  # CUDA maps far more address space than it uses
            limits = dataclasses.replace(limits, address_space=0)
        progress = self._progress(state)
        result = run_sandboxed(
            "app.worker.runner:convert_in_sandbox",
            payload,
            limits=limits,
            preload=_SANDBOX_PRELOAD,
            on_event=lambda e: progress(str(e.get("stage")), float(e.get("fraction", 0.0))),
            tick=lambda: self._check_abort(state),
        )
        self._pause(state, "publishing")
        artifacts = [
            self._ingest(name, f"{spec.job_id}.{suffix_}", media, out / file, out)
            for name, suffix_, media, file in _REPORT_FILES
        ]
        if result.get("output") and not spec.dry_run:
            artifacts.append(
                self._ingest(
                    "weights",
                    Path(result["output"]).name,
                    "application/octet-stream",
                    Path(result["output"]),
                    out,
                )
            )
        return bool(result["ok"]), artifacts

    def _check_abort(self, state: _State) -> None:
        with state.lock:
            abort = state.abort
        if abort:
            raise _Abort(abort)

    def _ingest(
        self, name: str, filename: str, media_type: str, path: Path, folder: Path
    ) -> dict[str, Any]:
        # The child's word is not trusted: publish only regular files in its own folder.
        if path.is_symlink() or path.resolve().parent != folder.resolve() or not path.is_file():
            raise SandboxError("internal-error", f"the sandbox produced no usable {name} file")
        sha, size = self.store.ingest(path)
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


def _as_list(paths: Path | list[Path]) -> list[str]:
    return [str(p) for p in (paths if isinstance(paths, list) else [paths])]


# What the fork server imports once, so each job's child starts with torch loaded.
_SANDBOX_PRELOAD = ("app.worker.runner", "app.engine.pipeline", "app.engine.target")

# (artifact name, file suffix, media type, file the sandbox writes in its out folder)
_REPORT_FILES = (
    ("report", "report.json", _MEDIA["json"], "report.json"),
    ("report-text", "report.txt", _MEDIA["text"], "report.txt"),
    ("manifest", "manifest.json", _MEDIA["json"], "manifest.json"),
)


def convert_in_sandbox(payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]) -> Any:
    """The child side of a job (runs under the sandbox's limits): build the target, convert,
    write the weights and the reports into the job's folder. Returns ``{"ok", "output"}``."""
    from app.engine.errors import InvalidTargetError
    from app.engine.options import WriteOptions
    from app.engine.pipeline import convert
    from app.engine.recipe import load_recipe
    from app.engine.report import render_text
    from app.engine.target import Target

    def one_or_many(paths: list[str]) -> Path | list[Path]:
        return Path(paths[0]) if len(paths) == 1 else [Path(p) for p in paths]

    kind = payload["target_kind"]
    if kind == "checkpoint":
        target = Target.from_checkpoint(one_or_many(payload["target_files"]))
    elif kind == "skeleton":
        target = Target.from_skeleton(payload["target_spec"] or {})
    else:
        spec_ = payload["target_spec"] or {}
        if not isinstance(spec_.get("architecture"), str):
            raise InvalidTargetError("an architecture target needs an architecture name")
        target = Target.from_architecture(
            spec_["architecture"], spec_.get("kwargs"), extra=payload.get("architectures")
        )
    recipe = load_recipe(payload["recipe"])
    last_stage, last_at = [""], [0.0]

    def progress(stage: str, fraction: float) -> None:
        # Throttled: the engine may report per tensor; the parent needs a few per second.
        now = time.monotonic()
        if stage != last_stage[0] or now - last_at[0] >= 0.1 or fraction >= 1.0:
            last_stage[0], last_at[0] = stage, now
            emit({"event": "progress", "stage": stage, "fraction": fraction})

    output = payload["output"]
    with target:
        result = convert(
            one_or_many(payload["source"]),
            target,
            recipe,
            output=Path(output) if output else None,
            options=WriteOptions(
                format=payload["output_format"],
                dtype=payload["output_dtype"],
                device=payload["device"],
            ),
            dry_run=payload["dry_run"],
            progress=progress,
            source_sha256=payload.get("source_sha256"),
        )
    reports = Path(payload["reports"])
    (reports / "report.json").write_bytes(_json(result.report))
    (reports / "report.txt").write_bytes(render_text(result.report).encode())
    (reports / "manifest.json").write_bytes(_json(result.manifest))
    produced = str(result.output) if result.output is not None and not payload["dry_run"] else None
    return {"ok": bool(result.ok), "output": produced}
