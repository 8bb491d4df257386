"""The worker processes ``graft serve`` embeds, restarted when they die."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading

__all__ = ["WorkerPool"]

logger = logging.getLogger(__name__)


class WorkerPool:
    """Keeps ``size`` worker processes alive (a killed worker is replaced after ``backoff``).

    The jobs of a dead worker are not its replacement's business: they come back through
    lease expiry, to whichever worker claims them.
    """

    def __init__(self, size: int, *, backoff: float = 1.0) -> None:
        self.size = size
        self.backoff = backoff
        self.processes: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._supervise, name="worker-pool", daemon=True)

    @staticmethod
    def _spawn(index: int) -> subprocess.Popen[bytes]:
        # The index pins each worker to one GPU when there are several (resolve_device).
        return subprocess.Popen(
            [sys.executable, "-m", "app.worker", "--embedded", "--index", str(index)]
        )

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
