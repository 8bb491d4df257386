"""A real Celery deployment on this machine's services, for one test module.

One ``graft serve`` (GRAFT_EXECUTOR=celery, no embedded workers) and two
``graft worker --executor celery`` processes, each in its own empty working directory,
over RabbitMQ (127.0.0.1:5672), a PostgreSQL database made for the run and an S3 bucket
served by ``rclone serve s3``. Queue and exchange names carry a per-run prefix and are
deleted at the end.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.e2e.conftest import Server
from tests.e2e.helpers import READY_SECONDS
from tests.plugins import pythonpath
from tests.s3server import S3Server

BROKER_URL = os.environ.get("GRAFT_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_ADMIN_URL = os.environ.get(
    "GRAFT_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def unreachable_reason() -> str | None:
    """Why the Celery stack cannot run here, in one line (None: it can)."""
    try:
        import celery  # noqa: F401
    except ImportError:
        return "celery is not installed (the `celery` extra)"
    if not reachable("127.0.0.1", 5672):
        return "RabbitMQ is unreachable at 127.0.0.1:5672"
    if not reachable("127.0.0.1", 5432):
        return "PostgreSQL is unreachable at 127.0.0.1:5432"
    return None


@contextmanager
def postgres_database() -> Iterator[str]:
    """A PostgreSQL database of our own for the run (the server is shared); dropped after."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    name = f"graft_{secrets.token_hex(6)}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def delete_broker_names(prefix: str) -> None:
    """Delete the run's queues and exchanges (Celery leaves them behind)."""
    import amqp

    host = BROKER_URL.split("@", 1)[1].split("/", 1)[0]
    with amqp.Connection(host=host, userid="guest", password="guest") as conn:
        channel = conn.channel()
        for queue in ("gpu", "cpu"):
            channel.queue_delete(f"{prefix}.{queue}")
        # Celery's broadcast (revoke) exchange is `<control_exchange>.pidbox`.
        for exchange in ("jobs", "control", "control.pidbox", "events"):
            channel.exchange_delete(f"{prefix}.{exchange}")
        channel.exchange_delete(f"reply.{prefix}.control.pidbox")


@dataclass
class Worker:
    """One ``graft worker --executor celery`` process in its own empty directory."""

    root: Path
    env: dict[str, str]
    queues: str
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log = self.root / "worker.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", "from app.cli import main; main()", "worker",
                 "--executor", "celery", "--queues", self.queues],
                cwd=self.root, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + READY_SECONDS  # it imports torch too
        while "ready." not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"celery worker did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """kill -9 the worker. Its pool process (the one running the job) dies with it:
        Celery sets PR_SET_PDEATHSIG=SIGKILL on it; checked here."""
        assert self.process is not None
        children = _children(self.pid)
        os.kill(self.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 5
        while any(_running(c) for c in children):
            if time.monotonic() > deadline:
                raise AssertionError(f"pool processes {children} outlived their worker")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGQUIT)  # cold shutdown: no job is waited for
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.kill()


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def parent_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


@dataclass
class Stack:
    server: Server
    workers: list[Worker]
    database_url: str
    s3: S3Server | None
    bucket: str
    prefix: str

    def worker_holding(self, owner: str) -> Worker:
        """The worker whose pool process is the lease owner ``host:pid:token``."""
        pid = int(owner.split(":")[1])
        parent = parent_of(pid)
        for worker in self.workers:
            if worker.pid in (pid, parent):
                return worker
        raise LookupError(owner)


@contextmanager
def celery_stack(
    tmp: Path,
    s3: S3Server | None,
    *,
    queues: tuple[str, ...] = ("cpu", "cpu"),
    stage_delay: str = "1",
    rewrite: Callable[[dict[str, str]], None] | None = None,
    **overrides: str,
) -> Iterator[Stack]:
    """The whole deployment: the API, and one worker per entry of ``queues`` (default: two
    workers on cpu; a worker may consume gpu only on a host with CUDA). Without ``s3``, blobs
    go to a folder they all share (the bench's like-for-like comparison with the local
    executor). ``rewrite`` may change the environment before anything starts."""
    prefix = f"graft-test-{secrets.token_hex(4)}"
    bucket = s3.create_bucket(f"celery-{secrets.token_hex(4)}") if s3 else ""
    if s3:
        storage = {
            "GRAFT_STORAGE_URL": f"s3://{bucket}/graft",
            "GRAFT_S3_ENDPOINT_URL": s3.endpoint_url,
            "AWS_ACCESS_KEY_ID": s3.access_key,
            "AWS_SECRET_ACCESS_KEY": s3.secret_key,
        }
    else:
        storage = {"GRAFT_STORAGE_DIR": str(tmp / "blobs")}  # fmt: skip
    with postgres_database() as database_url:
        env = {
            **os.environ,
            "PYTHONPATH": pythonpath(),
            "GRAFT_EXECUTOR": "celery",
            "GRAFT_BROKER_URL": BROKER_URL,
            "GRAFT_QUEUE_PREFIX": prefix,
            "GRAFT_DATABASE_URL": database_url,
            **storage,
            "GRAFT_DEVICE": "cpu",
            "GRAFT_LEASE_SECONDS": "3",
            "GRAFT_HEARTBEAT_SECONDS": "0.5",
            "GRAFT_DISPATCH_SWEEP_SECONDS": "2",
            "GRAFT_WORKER_NICE": "0",
            **overrides,
        }
        if rewrite is not None:  # e.g. route the services through proxies that can be cut
            rewrite(env)
        server = Server(tmp / "api")
        server.env.update(env)
        server.env["GRAFT_WORKERS"] = "0"
        worker_env = {**env, "GRAFT_TEST_STAGE_DELAY": stage_delay}
        workers = [
            Worker(tmp / f"worker-{chr(ord('a') + i)}", worker_env, q) for i, q in enumerate(queues)
        ]
        try:
            server.root.mkdir(parents=True, exist_ok=True)
            server.start()  # migrates the database
            for worker in workers:
                worker.start()
            yield Stack(server, workers, database_url, s3, bucket, prefix)
        finally:
            for worker in workers:
                worker.stop()
            server.stop()
            delete_broker_names(prefix)
