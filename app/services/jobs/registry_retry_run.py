"""A registration retry's work, in a worker (see :mod:`app.services.jobs.registry_retry`).

Kept apart from the request side so that the API process never imports what registering
needs (the job-execution service, the MLflow client).
"""

from __future__ import annotations

import logging
from typing import Any

from app.db.repositories import CheckpointRepository, JobRepository
from app.db.repositories.registrations import RETRY_RUNNING
from app.db.session import Database
from app.errors import GraftError
from app.services.jobs.execution import JobControl, JobSettings, interruptible
from app.services.registration import register_result
from app.services.sources.references import RegisterSpec
from app.storage import BlobStore

__all__ = ["register_again"]

logger = logging.getLogger(__name__)


def register_again(
    database: Database,
    store: BlobStore,
    job_id: str,
    *,
    settings: JobSettings,
    control: JobControl,
) -> dict[str, Any]:
    """Register a succeeded job's published result (a worker holds the retry's lease).

    Args:
        database: where the job is read (never written here).
        store: where its artifacts are.
        job_id: the job.
        settings: the worker's registry.
        control: its ``tick`` runs every 0.1 s while the registry is called; what it raises
            (a cancel, a lost lease) stops the retry.

    Returns:
        ``result.registry``: ``{"uri", "version"}``, or ``{"error": {"type", "message"}}``.
    """
    with database.transaction(write=False) as session:
        job = JobRepository(session).get(job_id)
        if job is None or not job.register:
            return {"error": {"type": "not-found", "message": "the job is gone"}}
        spec = RegisterSpec.model_validate(job.register)
        artifacts = [
            {"name": a.name, "filename": a.filename, "sha256": a.sha256, "size": a.size}
            for a in job.artifacts
        ]
        source = CheckpointRepository(session).get(job.source_id) if job.source_id else None
        source_sha256 = source.sha256 if source is not None else ""
    control.stage(RETRY_RUNNING)
    try:
        with store.workdir() as work:
            return interruptible(
                control,
                lambda: register_result(
                    spec,
                    job_id=job_id,
                    artifacts=artifacts,
                    source_sha256=source_sha256,
                    store=store,
                    work=work,
                    config=settings.registry,
                ),
            )
    except GraftError as exc:
        logger.warning("job %s: registration retry failed: %s", job_id, exc.message)
        return {"error": {"type": exc.type, "message": exc.message}}
