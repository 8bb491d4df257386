"""What happens to Celery jobs when a service goes away: measured, not guessed.

The API and two ``graft worker --executor celery`` processes reach RabbitMQ, PostgreSQL and
the S3 server (``rclone serve s3``) through TCP proxies this script owns, so a service can be
"down" for Graft (connections refused and cut) without stopping the machine's shared
servers. An OOM kill is a SIGKILL of the pool process running the job, or of its sandbox
child, which is what the kernel's OOM killer sends. Each scenario prints what a client saw.

    .venv/bin/python bench/executor_failures.py
    .venv/bin/python bench/executor_failures.py --time-limit   # Celery's hard time limit
    .venv/bin/python bench/executor_failures.py --failover     # kill -9 mid-job, both executors
    .venv/bin/python bench/executor_failures.py --failover-local   # (or --failover-celery)

``--failover`` kills the worker running a job with SIGKILL, under the production lease of
30 s, and times how soon another worker resumes it: with Celery from the redelivery (the
survivor's log shows the task received again), with the local executor from the kill. Both
must be under 5 s: the taker does not wait out the dead holder's lease (fencing tokens).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.conftest import Server  # noqa: E402
from tests.e2e.helpers import net, saved  # noqa: E402
from tests.executors.celery_stack import _children, celery_stack  # noqa: E402
from tests.s3server import serve_s3  # noqa: E402


class Proxy:
    """A TCP proxy on a free loopback port to ``target``; ``cut()`` refuses and drops
    every connection until ``restore()``."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.up = True
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.server.accept()
            if not self.up:
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        self.up = False
        with self.lock:
            for conn in self.conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
            self.conns.clear()

    def restore(self) -> None:
        self.up = True


def _until(predicate: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.1)
    return None


def time_limit() -> None:
    """A job longer than GRAFT_TASK_TIME_LIMIT_SECONDS (3 s here; each job sleeps 4 s)."""
    with tempfile.TemporaryDirectory(prefix="graft-limit-") as tmp_name, celery_stack(
        Path(tmp_name), None, queues=("cpu",), stage_delay="4",
        GRAFT_TASK_TIME_LIMIT_SECONDS="3", GRAFT_MAX_ATTEMPTS="2",
    ) as stack, stack.server.client() as client:  # fmt: skip
        ids = []
        for seed in (1, 2):
            r = client.post(f"/v1/checkpoints?filename=m{seed}.pth", content=saved(net(seed)))
            ids.append(r.json()["id"])
        body = {"source": ids[0], "target": {"checkpoint": ids[1]}, "device": "cpu"}
        t0 = time.monotonic()
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        done = _until(lambda: (j := client.get(f"/v1/jobs/{job_id}").json())["status"]
                      in ("succeeded", "failed", "cancelled") and j, 120)  # fmt: skip
        if done is None:
            print("time limit: job not finished after 120 s")
            return
        error = (done.get("error") or {}).get("type")
        print(
            f"time limit 3 s, job of 8 s: {done['status']} (attempts {done['attempts']}, "
            f"error {error}) after {time.monotonic() - t0:.1f} s"
        )


_FAILOVER_ROUNDS = 3
_LEASE = "30"  # the production default: a taker that waited it out would show 30 s


def _resumed(client: httpx.Client, job_id: str, dead: str) -> float | None:
    """When (monotonic) a worker other than ``dead`` holds the job."""
    found = _until(
        lambda: (
            (j := client.get(f"/v1/jobs/{job_id}").json())["worker"] not in (None, dead)
            or j["status"] == "succeeded"
        ),
        60,
    )
    return time.monotonic() if found else None


def _failover_job(client: httpx.Client, ids: list[str]) -> tuple[str, str]:
    body = {"source": ids[0], "target": {"checkpoint": ids[1]}, "device": "cpu"}
    job_id = client.post("/v1/jobs", json=body).json()["id"]
    running = _until(
        lambda: (
            (j := client.get(f"/v1/jobs/{job_id}").json())["status"] == "running"
            and j["worker"]
            and j
        ),
        60,
    )
    assert running, job_id
    return job_id, str(running["worker"])


def _uploads(client: httpx.Client) -> list[str]:
    return [
        client.post(f"/v1/checkpoints?filename=f{seed}.pth", content=saved(net(seed))).json()["id"]
        for seed in (1, 2)
    ]


def _report(name: str, client: httpx.Client, job_id: str, t0: float, resumed: float | None,
            since: float | None) -> None:  # fmt: skip
    done = _until(
        lambda: (
            (j := client.get(f"/v1/jobs/{job_id}").json())["status"]
            in ("succeeded", "failed", "cancelled")
            and j
        ),
        120,
    )
    status = f"{done['status']}, attempts {done['attempts']}" if done else "not finished"
    gap = f"{resumed - since:.2f} s" if resumed is not None and since is not None else "n/a"
    print(f"{name}: resumed {gap} after the {'redelivery' if since != t0 else 'kill'}; "
          f"{status} {time.monotonic() - t0:.1f} s after the kill", flush=True)  # fmt: skip


def _logged(log: Path, job_id: str) -> float | None:
    """When (monotonic) ``log`` first shows ``job_id`` (the task received)."""
    return _until(lambda: job_id in log.read_text() and time.monotonic(), 60)  # type: ignore[no-any-return]


def failover_celery() -> None:
    """kill -9 of the Celery worker running a job; another worker resumes it."""
    with tempfile.TemporaryDirectory(prefix="graft-failover-") as tmp_name, celery_stack(
        Path(tmp_name), None, queues=("cpu", "cpu"), stage_delay="2",
        GRAFT_LEASE_SECONDS=_LEASE, GRAFT_HEARTBEAT_SECONDS="2",
    ) as stack, stack.server.client() as client:  # fmt: skip
        ids = _uploads(client)
        for round_ in range(_FAILOVER_ROUNDS):
            job_id, owner = _failover_job(client, ids)
            victim = stack.worker_holding(owner)
            survivor = stack.workers[1 - stack.workers.index(victim)]
            t0 = time.monotonic()
            victim.kill()
            redelivered = _logged(survivor.log, job_id)
            resumed = _resumed(client, job_id, owner)
            _report(f"celery kill -9 #{round_ + 1}", client, job_id, t0, resumed, redelivered)
            victim.start()


def _local_workers(database: Path, killed: set[str]) -> int:
    """How many local workers, none of them killed, heartbeated in the last 5 s."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute(
            "SELECT id FROM workers WHERE executor = 'local' "
            "AND heartbeat_at > datetime('now', '-5 seconds')"
        ).fetchall()
    return len({row[0] for row in rows} - killed)


def failover_local() -> None:
    """kill -9 of the local worker process running a job; another worker resumes it."""
    with tempfile.TemporaryDirectory(prefix="graft-failover-") as tmp_name:
        server = Server(Path(tmp_name), GRAFT_WORKERS="2", GRAFT_TEST_STAGE_DELAY="2",
                        GRAFT_LEASE_SECONDS=_LEASE, GRAFT_HEARTBEAT_SECONDS="2")  # fmt: skip
        server.start()
        try:
            with server.client() as client:
                ids = _uploads(client)
                killed: set[str] = set()
                for round_ in range(_FAILOVER_ROUNDS):
                    # Both workers up (the one killed last round is replaced and warm): the
                    # figure is the failover's, not a cold start's.
                    _until(lambda: _local_workers(server.root / "graft.db", killed) == 2, 180)
                    job_id, owner = _failover_job(client, ids)
                    killed.add(owner)
                    t0 = time.monotonic()
                    os.kill(int(owner.split(":")[1]), signal.SIGKILL)
                    resumed = _resumed(client, job_id, owner)
                    _report(f"local kill -9 #{round_ + 1}", client, job_id, t0, resumed, t0)
                ended = [ln for ln in server.log.read_text().splitlines() if "dead holders" in ln]
                print(f"local: {len(ended)} takeover(s) logged as dead holders", flush=True)
        finally:
            server.stop()


def main() -> None:
    if sys.argv[1:] == ["--time-limit"]:
        time_limit()
        return
    if sys.argv[1:2] and sys.argv[1].startswith("--failover"):
        which = sys.argv[1].removeprefix("--failover").lstrip("-")  # "", "local" or "celery"
        if which in ("", "local"):
            failover_local()
        if which in ("", "celery"):
            failover_celery()
        return
    proxies: dict[str, Proxy] = {}

    def rewrite(env: dict[str, str]) -> None:
        proxies["broker"] = Proxy(("127.0.0.1", 5672))
        proxies["database"] = Proxy(("127.0.0.1", 5432))
        env["GRAFT_BROKER_URL"] = f"amqp://guest:guest@127.0.0.1:{proxies['broker'].port}//"
        env["GRAFT_DATABASE_URL"] = env["GRAFT_DATABASE_URL"].replace(
            "127.0.0.1:5432", f"127.0.0.1:{proxies['database'].port}"
        )
        s3_port = int(env["GRAFT_S3_ENDPOINT_URL"].rsplit(":", 1)[1])
        proxies["s3"] = Proxy(("127.0.0.1", s3_port))
        env["GRAFT_S3_ENDPOINT_URL"] = f"http://127.0.0.1:{proxies['s3'].port}"

    with tempfile.TemporaryDirectory(prefix="graft-failures-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "s3").mkdir()
        with (
            serve_s3(tmp / "s3") as s3,
            celery_stack(tmp, s3, queues=("cpu", "cpu"), stage_delay="2", rewrite=rewrite) as stack,
            stack.server.client() as client,
        ):
            _scenarios(stack, client, proxies)


def _scenarios(stack: Any, client: httpx.Client, proxies: dict[str, Proxy]) -> None:
    def upload(seed: int) -> str:
        r = client.post(f"/v1/checkpoints?filename=m{seed}.pth", content=saved(net(seed)))
        r.raise_for_status()
        return str(r.json()["id"])

    source, target = upload(1), upload(2)

    def submit() -> httpx.Response:
        body = {"source": source, "target": {"checkpoint": target}, "device": "cpu"}
        return client.post("/v1/jobs", json=body)

    def job(job_id: str) -> dict[str, Any]:
        return dict(client.get(f"/v1/jobs/{job_id}").json())

    def terminal(job_id: str, timeout: float = 120) -> dict[str, Any] | None:
        return _until(lambda: (j := job(job_id))["status"] in
                      ("succeeded", "failed", "cancelled") and j, timeout)  # fmt: skip

    def running(job_id: str) -> dict[str, Any]:
        found = _until(lambda: (j := job(job_id))["status"] == "running" and j["worker"] and j, 60)
        assert found, job(job_id)
        return dict(found)

    def show(name: str, done: dict[str, Any] | None, t0: float) -> None:
        if done is None:
            print(f"{name}: not finished after the wait", flush=True)
            return
        error = (done.get("error") or {}).get("type")
        print(f"{name}: {done['status']} (attempts {done['attempts']}, error {error}) "
              f"{time.monotonic() - t0:.1f} s after the fault", flush=True)  # fmt: skip

    # 1. Broker down when a job is created, back 20 s later.
    proxies["broker"].cut()
    t0 = time.monotonic()
    r = submit()
    print(f"broker down: POST /v1/jobs -> {r.status_code} in {time.monotonic() - t0:.2f} s")
    ready = client.get("/readyz")
    print(f"broker down: /readyz -> {ready.status_code} {ready.json().get('checks')}")
    job_id = r.json()["id"]
    time.sleep(20)
    j = job(job_id)
    print(f"broker down 20 s: job {j['status']}, queue {j['queue']}")
    proxies["broker"].restore()
    t0 = time.monotonic()
    show("broker back", terminal(job_id), t0)

    # 2. Broker connection cut while a job runs, back after 5 s.
    r = submit()
    job_id = r.json()["id"]
    running(job_id)
    t0 = time.monotonic()
    proxies["broker"].cut()
    time.sleep(5)
    proxies["broker"].restore()
    show("broker cut mid-job for 5 s", terminal(job_id), t0)

    # 3. S3 down while a job runs (its inputs are already fetched; publishing needs S3).
    job_id = submit().json()["id"]
    running(job_id)
    t0 = time.monotonic()
    proxies["s3"].cut()
    time.sleep(8)
    j = job(job_id)
    print(
        f"S3 down mid-job, 8 s later: job {j['status']} (attempts {j['attempts']}, "
        f"error {(j.get('error') or {}).get('type')})"
    )
    r = client.post("/v1/checkpoints?filename=x.pth", content=saved(net(9)))
    print(
        f"S3 down: upload -> {r.status_code} {r.headers.get('content-type')} "
        f"{r.json().get('type') if r.headers.get('content-type', '').endswith('json') else ''}"
    )
    r = httpx.get(f"{stack.server.url}/readyz", timeout=30)  # a fresh connection
    print(f"S3 down: /readyz -> {r.status_code} {r.json().get('checks')}")
    time.sleep(10)
    j = job(job_id)
    print(f"S3 down 10 s more: job {j['status']} (attempts {j['attempts']})")
    t0 = time.monotonic()
    proxies["s3"].restore()
    show("S3 back", terminal(job_id), t0)

    # 4. Database down while a job runs, for 10 s (past the 3 s lease).
    job_id = submit().json()["id"]
    running(job_id)
    t0 = time.monotonic()
    proxies["database"].cut()
    r = None
    try:
        r = client.get(f"/v1/jobs/{job_id}", timeout=15)
        print(f"database down: GET /v1/jobs/{{id}} -> {r.status_code} "
              f"{r.json().get('type')}")  # fmt: skip
    except httpx.HTTPError as exc:
        print(f"database down: GET /v1/jobs/{{id}} -> {type(exc).__name__}")
    time.sleep(max(0.0, 10 - (time.monotonic() - t0)))
    proxies["database"].restore()
    show("database down 10 s mid-job", terminal(job_id), t0)

    # 5. OOM kill of the pool process running a job (SIGKILL, as the OOM killer sends).
    job_id = submit().json()["id"]
    owner = running(job_id)["worker"]
    t0 = time.monotonic()
    os.kill(int(owner.split(":")[1]), signal.SIGKILL)
    show("pool process OOM-killed", terminal(job_id), t0)

    # 6. OOM kill of the sandbox child converting (the likelier victim: it holds the tensors).
    job_id = submit().json()["id"]
    owner = running(job_id)["worker"]
    pool = int(owner.split(":")[1])
    # pool process -> its fork server -> the conversion child
    sandbox = _until(lambda: [g for c in _children(pool) for g in _children(c)], 30)
    t0 = time.monotonic()
    victims = sandbox or []
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    show(f"sandbox child OOM-killed ({len(victims)} process)", terminal(job_id), t0)


if __name__ == "__main__":
    main()
