"""A worker process: ``graft worker`` or ``python -m app.worker``."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from app.config import Settings, get_settings
from app.db.session import Database
from app.services.conversion import warm_up
from app.services.limits import conversion_limits, inspection_limits
from app.services.sources.references import RegistryConfig
from app.services.warmth import mark_warm, markers_dir
from app.storage import open_store
from app.worker.runner import JobRunner

__all__ = ["run_worker"]

logger = logging.getLogger(__name__)

# TEST ONLY: seconds a worker sleeps between stages so tests can act mid-job (kill -9,
# cancel). Unset (0) outside tests; documented in tests/e2e/conftest.py.
STAGE_DELAY_ENV = "GRAFT_TEST_STAGE_DELAY"


def run_worker(
    settings: Settings | None = None, *, watch_parent: bool = False, index: int = 0
) -> None:
    """Run jobs until SIGTERM/SIGINT (or, embedded, until the parent process goes away).

    ``index`` is this worker's number on the host: with several GPUs, worker ``i`` uses GPU
    ``i % count`` (unless ``GRAFT_DEVICE`` names one).
    """
    settings = settings or get_settings()
    if settings.worker_nice:
        # Conversions are batch work: on a shared host the API must keep answering first.
        os.nice(settings.worker_nice)
    database = Database(settings.database_url, busy_timeout_ms=settings.busy_timeout_ms)
    store = open_store(settings)
    store.ensure()
    # A worker that replaces a killed one collects the temp files its predecessor left.
    store.cleanup_orphans()
    runner = JobRunner(
        database,
        store,
        lease_seconds=settings.lease_seconds,
        heartbeat_seconds=settings.heartbeat_seconds,
        poll_seconds=settings.poll_seconds,
        device=settings.device,
        stage_delay=float(os.environ.get(STAGE_DELAY_ENV, "0") or 0),
        limits=conversion_limits(settings),
        worker_index=index,
        architectures=settings.architectures,
        registry=RegistryConfig.from_settings(settings),
        inspect_limits=inspection_limits(settings),
        max_tensors=settings.max_tensors,
    )

    def _stop(signum: int, _frame: FrameType | None) -> None:
        logger.info("worker %s: signal %d, stopping", runner.owner, signum)
        runner.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    if watch_parent:
        parent = os.getppid()

        def _watch() -> None:
            while not runner.stop_event.wait(1.0):
                if os.getppid() != parent:
                    logger.warning("worker %s: parent exited, stopping", runner.owner)
                    runner.stop_event.set()

        threading.Thread(target=_watch, daemon=True).start()
    # Warm before the first claim: the fork server imports torch once, here, not in job one.
    seconds = warm_up()
    mark_warm(markers_dir(settings.storage_dir))
    logger.info("worker %s: warm in %.1f s", runner.owner, seconds)
    try:
        runner.run()
    finally:
        database.dispose()
