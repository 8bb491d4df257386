"""A real ``mlflow server`` for tests (SQLite backend, proxied artifacts, webhooks on).

It runs from its own venv (``make mlflow-venv``: ``$GRAFT_TEST_MLFLOW_VENV``, by default
``~/.cache/graft/mlflow-3.17.2``), never Graft's. Without it, tests skip with the reason.
Webhooks may reach loopback receivers, and the server re-reads its webhook list every second
(MLflow caches it for 60 s by default, so a new webhook would fire only after that).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.parts import require_part

__all__ = [
    "MLFLOW",
    "MLFLOW_TORCH_PYTHON",
    "free_port",
    "mlflow_python",
    "running_mlflow",
]

logger = logging.getLogger(__name__)

VENV = Path(
    os.environ.get("GRAFT_TEST_MLFLOW_VENV", Path.home() / ".cache/graft/mlflow-3.17.2")
).expanduser()
MLFLOW = VENV / "bin" / "mlflow"
# A consumer's environment: MLflow beside torch (the pinned CPU build) and Graft, to load
# what Graft registered with mlflow.pyfunc (``make mlflow-torch-venv``).
TORCH_VENV = Path(
    os.environ.get("GRAFT_TEST_MLFLOW_TORCH_VENV", Path.home() / ".cache/graft/mlflow-torch-3.17.2")
).expanduser()
MLFLOW_TORCH_PYTHON = TORCH_VENV / "bin" / "python"

_WEBHOOK_ENV = {
    "MLFLOW_WEBHOOK_ALLOWED_SCHEMES": "http,https",
    "MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS": "true",
    "MLFLOW_WEBHOOK_CACHE_TTL": "1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mlflow_python(
    python: Path, script: str, *args: str, tracking_uri: str, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` with MLflow's own client (``python`` of one of the MLflow venvs),
    against ``tracking_uri``; fail the test with its output when it fails."""
    if not python.exists():
        require_part("MLflow client", f"no {python}: run `make mlflow-venv mlflow-torch-venv`")
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PYTHONPATH": str(cwd)}
    env.pop("MLFLOW_EXPERIMENT_NAME", None)
    done = subprocess.run(
        [str(python), "-c", script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        pytest.fail(f"MLflow client script failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done


@contextmanager
def running_mlflow(root: Path) -> Iterator[str]:
    """Start ``mlflow server`` under ``root`` on a free port; yield its URL; stop it."""
    if not MLFLOW.exists():
        require_part("MLflow", f"no mlflow server at {MLFLOW}: run `make mlflow-venv`")
    port = free_port()
    log = (root / "server.log").open("wb")
    argv = [str(MLFLOW), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}"]
    argv += ["--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--workers", "1"]
    # Its own session: the server forks workers, and the whole group is stopped at the end.
    proc = subprocess.Popen(
        argv,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, **_WEBHOOK_ENV},
    )
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > 120:
                pytest.fail("mlflow server not ready after 120 s")
            time.sleep(0.25)
        logger.info("mlflow server ready in %.1f s", time.monotonic() - started)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()
