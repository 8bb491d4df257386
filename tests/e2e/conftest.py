"""Real ``graft serve`` processes (uvicorn + worker processes) on free ports.

Test-only knob: ``GRAFT_TEST_STAGE_DELAY`` (seconds) makes workers pause at each stage, so a
test can kill a worker or restart the server while a job is mid-flight. It is read only by
the test plugin ``tests/plugins/sitecustomize.py``, on the servers' ``PYTHONPATH``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.helpers import wait_ready
from tests.mlflowserver import running_mlflow
from tests.plugins import pythonpath

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """One ``graft serve`` on a data directory; restartable on the same data."""

    def __init__(self, root: Path, *, host: str | None = None, **env: str) -> None:
        self.root = root
        self.host = host
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": pythonpath(),
            "GRAFT_DATABASE_URL": f"sqlite:///{root / 'graft.db'}",
            "GRAFT_STORAGE_DIR": str(root / "blobs"),
            "GRAFT_WORKERS": "2",
            "GRAFT_DEVICE": "cpu",
            "GRAFT_LEASE_SECONDS": "2",
            "GRAFT_HEARTBEAT_SECONDS": "0.3",
            "GRAFT_POLL_SECONDS": "0.1",
            "GRAFT_MAX_UPLOAD_BYTES": str(64 * 1024 * 1024),
            "GRAFT_INSPECTORS": "2",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log = root / "server.log"

    def start(self, **env: str) -> None:
        self.env.update(env)
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from app.cli import main; main()",
                    "serve",
                    "--port",
                    str(self.port),
                    *(["--host", self.host] if self.host else []),
                ],
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_ready(self.url, self.process, self.log)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def wait(self, client: httpx.Client, job_id: str, timeout: float = 90) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] in TERMINAL:
                return job
            time.sleep(0.1)
        raise TimeoutError(f"job {job_id} not finished:\n{self.log.read_text()[-4000:]}")

    def blobs(self) -> set[Path]:
        return {p for p in (self.root / "blobs" / "sha256").rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A plain server shared by a module's tests."""
    srv = Server(tmp_path_factory.mktemp("serve"))
    srv.start()
    yield srv
    srv.stop()


MLFLOW_HOOK_SECRET = "mlflow-hook-secret"


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow server shared by a module's tests."""
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.fixture(scope="module")
def graft(tmp_path_factory: pytest.TempPathFactory, mlflow_url: str) -> Iterator[Server]:
    """A server that talks to ``mlflow_url``, its webhooks signed with ``MLFLOW_HOOK_SECRET``."""
    srv = Server(
        tmp_path_factory.mktemp("graft"),
        GRAFT_MLFLOW_TRACKING_URI=mlflow_url,
        GRAFT_OUTBOUND_ALLOW="mlflow",
        GRAFT_MLFLOW_WEBHOOK_SECRET=MLFLOW_HOOK_SECRET,
    )
    srv.start()
    yield srv
    srv.stop()
