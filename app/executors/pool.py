"""Embedded worker processes: :class:`WorkerPool` keeps the ones ``graft serve`` runs alive.

A module of its own, light to import: ``graft serve`` starts its workers first, so that their
warm-up (torch imported in each worker's fork server) runs while the API process migrates the
database and imports itself. A worker started with a gate waits for the gate file (written by
:meth:`WorkerPool.open_gate` once the schema is migrated) before it touches the database.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

__all__ = ["WorkerPool", "start_warming"]

logger = logging.getLogger(__name__)


def start_warming() -> None:
    """Start this worker's conversion fork server now: it imports torch and the engine in
    its own process while this one imports the executor (``python -m app.worker`` calls it
    first thing). The worker's warm-up then finds it started."""
    from app.sandbox.runner import start_fork_server
    from app.services.warmth import CONVERSION_PRELOAD

    start_fork_server(CONVERSION_PRELOAD)


class WorkerPool:
    """Keeps ``size`` worker processes alive (a killed worker is replaced after ``backoff``).

    The jobs of a dead worker are not its replacement's business: they come back through
    lease expiry, to whichever worker claims them.
    """

    def __init__(self, size: int, *, backoff: float = 1.0, gate: Path | None = None) -> None:
        self.size = size
        self.backoff = backoff
        self.gate = gate
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)

    def _spawn(self, index: int) -> subprocess.Popen[bytes]:
        # The index pins each worker to one GPU when there are several (resolve_device).
        argv = [sys.executable, "-m", "app.worker", "--embedded", "--index", str(index)]
        return subprocess.Popen(argv + (["--gate", str(self.gate)] if self.gate else []))

    def open_gate(self) -> None:
        """Let the workers touch the database (the schema is migrated): they warm up before,
        in parallel with the migrations and the API's own start."""
        if self.gate is not None:
            self.gate.parent.mkdir(parents=True, exist_ok=True)
            self.gate.write_text("open\n")

    def start(self) -> None:
        with self._lock:
            self.processes = [self._spawn(i) for i in range(self.size)]
        logger.info("started %d worker process(es): %s", self.size, self.pids())
        self._thread.start()

    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self.processes]

    def _supervise(self) -> None:
        while not self._stop.wait(self.backoff):
            with self._lock:
                for i, process in enumerate(self.processes):
                    code = process.poll()
                    if code is not None and not self._stop.is_set():
                        logger.warning("worker %d exited with %s; restarting", process.pid, code)
                        self.processes[i] = self._spawn(i)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every worker (a running job goes back to the queue), then wait."""
        self._stop.set()
        with self._lock:
            for process in self.processes:
                if process.poll() is None:
                    process.terminate()
            for process in self.processes:
                try:
                    process.wait(timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
