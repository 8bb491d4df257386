"""Against a real ``graft serve`` (uvicorn + worker processes): signed webhooks and their
durability across a crash, idempotent retries, Server-Sent Events resumed with
Last-Event-ID, the Python client, and ``graft submit`` end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from safetensors.torch import load_file

from app.client import GraftClient, IdempotencyConflictError, InvalidRequestError
from tests.e2e.conftest import REPO, Server
from tests.e2e.helpers import net, saved, until
from tests.webhook_receiver import verify, webhook_receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ENV = {
    "GRAFT_OUTBOUND_ALLOW": "127.0.0.1:*",
    "GRAFT_WEBHOOK_SECRET": SECRET,
    "GRAFT_WEBHOOK_BACKOFF_SECONDS": "0.3",
    "GRAFT_WEBHOOK_POLL_SECONDS": "0.1",
    "GRAFT_EVENTS_POLL_SECONDS": "0.05",
    "GRAFT_PROGRESS_EVENT_SECONDS": "0.05",
    # Each stage waits a little, so a test can disconnect (or crash the server) mid-job.
    "GRAFT_TEST_STAGE_DELAY": "0.4",
}


@pytest.fixture(scope="module")
def hooks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("hooks"), **ENV)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    paths = {"source": root / "source.pth", "target": root / "target.pth"}
    paths["source"].write_bytes(saved(net(0)))
    paths["target"].write_bytes(saved(net(1)))
    return paths


def _ids(client: httpx.Client, models: dict[str, Path]) -> tuple[str, str]:
    ids = []
    for name in ("source", "target"):
        with models[name].open("rb") as f:
            ids.append(client.post("/v1/checkpoints", files={"file": f}).json()["id"])
    return ids[0], ids[1]


def _events(response: httpx.Response) -> list[tuple[int, str, dict[str, Any]]]:
    events, block = [], {}
    for line in response.text.splitlines():
        if not line:
            if block:
                events.append((int(block["id"]), block["event"], json.loads(block["data"])))
            block = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(": ")
            block[field] = value
    return events


# -- webhooks ----------------------------------------------------------------------------


def test_a_finished_job_sends_one_verified_webhook(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with webhook_receiver() as receiver, hooks_server.client() as client:
        source, target = _ids(client, models)
        receiver.statuses = [500]  # the receiver fails once: retried, same webhook-id
        job = client.post(
            "/v1/jobs",
            json={"source": source, "target": {"checkpoint": target},
                  "callback": {"url": receiver.url, "events": ["succeeded"]}},
        ).json()  # fmt: skip
        assert job["callback"] == {"url": receiver.url, "events": ["succeeded"]}
        done = hooks_server.wait(client, job["id"])
        first, second = receiver.wait(2)
        deliveries = client.get(f"/v1/jobs/{job['id']}/deliveries").json()
    assert done["status"] == "succeeded"
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert verify(SECRET, second.headers, second.body)
    assert second.json["type"] == "job.succeeded"
    assert second.json["data"]["id"] == job["id"]
    assert second.json["data"]["status"] == "succeeded"
    (delivery,) = deliveries["data"]
    assert (delivery["id"], delivery["state"]) == (first.headers["webhook-id"], "delivered")
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 204]


def test_a_callback_to_a_host_off_the_allow_list_is_refused_at_creation(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with hooks_server.client() as client:
        source, target = _ids(client, models)
        response = client.post(
            "/v1/jobs",
            json={"source": source, "target": {"checkpoint": target},
                  "callback": {"url": "http://169.254.169.254/latest"}},
        )  # fmt: skip
    assert response.status_code == 422
    assert response.json()["type"] == "outbound-refused"
    assert "169.254.169.254" in response.json()["detail"]


def test_a_crash_before_delivery_loses_no_webhook(tmp_path: Path, models: dict[str, Path]) -> None:
    # The first server never polls its outbox after start (an hour between polls): the job
    # finishes, its webhook waits in the outbox, and the server is killed with SIGKILL.
    srv = Server(tmp_path, **{**ENV, "GRAFT_WEBHOOK_POLL_SECONDS": "3600"})
    srv.start()
    with webhook_receiver() as receiver:
        try:
            with srv.client() as client:
                source, target = _ids(client, models)
                job = client.post(
                    "/v1/jobs",
                    json={"source": source, "target": {"checkpoint": target},
                          "callback": {"url": receiver.url}},
                ).json()  # fmt: skip
                assert srv.wait(client, job["id"])["status"] == "succeeded"
                (pending,) = client.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"]
            assert (pending["state"], pending["attempts"]) == ("pending", [])
            assert srv.process is not None
            srv.process.kill()
            srv.process.wait()
            # Only the API process delivers, and it is gone: nothing can arrive from now on.
            assert receiver.received == []
            srv.start(GRAFT_WEBHOOK_POLL_SECONDS="0.1")
            (got,) = receiver.wait(1)
            with srv.client() as client:
                (delivered,) = client.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"]
        finally:
            srv.stop()
    assert got.headers["webhook-id"] == pending["id"]
    assert verify(SECRET, got.headers, got.body)
    assert got.json["data"]["id"] == job["id"]
    assert delivered["state"] == "delivered"
    assert [a["status_code"] for a in delivered["attempts"]] == [204]


def test_rotating_the_secret_signs_later_deliveries_with_the_new_one(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with webhook_receiver() as receiver, hooks_server.client() as client:
        rotated = client.post("/v1/webhooks/secret")
        assert rotated.status_code == 201
        secret = rotated.json()["secret"]
        assert secret.startswith("whsec_") and secret != SECRET
        source, target = _ids(client, models)
        job = client.post(
            "/v1/jobs",
            json={"source": source, "target": {"checkpoint": target},
                  "callback": {"url": receiver.url}},
        ).json()  # fmt: skip
        hooks_server.wait(client, job["id"])
        (got,) = receiver.wait(1)
    assert verify(secret, got.headers, got.body)
    assert not verify(SECRET, got.headers, got.body)


# -- idempotency -------------------------------------------------------------------------


def test_an_idempotent_retry_returns_the_first_job(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with hooks_server.client() as client:
        source, target = _ids(client, models)
        body = {"source": source, "target": {"checkpoint": target}, "dry_run": True}
        key = {"Idempotency-Key": "retry-1"}
        first = client.post("/v1/jobs", json=body, headers=key)
        again = client.post("/v1/jobs", json=body, headers=key)
        other = client.post("/v1/jobs", json={**body, "dry_run": False}, headers=key)
        jobs = client.get("/v1/jobs", params={"limit": 1000}).json()["data"]
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json() == first.json()
    assert again.headers["location"] == first.headers["location"]
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert sum(j["id"] == first.json()["id"] for j in jobs) == 1
    assert other.status_code == 409
    assert other.json()["type"] == "idempotency-conflict"


def test_a_stored_4xx_is_replayed_and_a_duplicate_in_flight_gets_409(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with hooks_server.client() as client:
        body = {"source": "0" * 32, "target": {"architecture": "nope"}}
        key = {"Idempotency-Key": "bad-1"}
        first = client.post("/v1/jobs", json=body, headers=key)
        again = client.post("/v1/jobs", json=body, headers=key)
        assert first.status_code == again.status_code == 422
        assert again.json() == first.json()

        # An upload that streams slowly is in flight while the duplicate arrives.
        data = models["source"].read_bytes()
        started = threading.Event()

        def slow() -> Iterator[bytes]:
            started.set()
            for i in range(0, len(data), 256):
                time.sleep(0.05)
                yield data[i : i + 256]

        slow_key = {"Idempotency-Key": "upload-1"}
        results: dict[str, httpx.Response] = {}

        def upload() -> None:
            results["first"] = client.post(
                "/v1/checkpoints", params={"filename": "s.pth"}, content=slow(), headers=slow_key
            )

        thread = threading.Thread(target=upload)
        thread.start()
        started.wait(10)
        # The server is receiving it (its key is taken): the upload's workdir exists.
        until(lambda: any((hooks_server.root / "blobs" / "tmp").iterdir()))
        with hooks_server.client() as other:
            duplicate = other.post(
                "/v1/checkpoints", params={"filename": "s.pth"}, content=data, headers=slow_key
            )
        thread.join(60)
        replay = client.post(
            "/v1/checkpoints", params={"filename": "s.pth"}, content=data, headers=slow_key
        )
    assert duplicate.status_code == 409
    assert duplicate.json()["type"] == "idempotency-in-progress"
    assert results["first"].status_code in (200, 201)
    assert replay.status_code == results["first"].status_code
    assert replay.json() == results["first"].json()


# -- events ------------------------------------------------------------------------------


def test_events_resume_exactly_with_last_event_id(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with hooks_server.client() as client:
        source, target = _ids(client, models)
        job = client.post("/v1/jobs", json={"source": source, "target": {"checkpoint": target}})
        job_id = job.json()["id"]
        seen: list[tuple[int, str, dict[str, Any]]] = []
        with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
            block: dict[str, str] = {}
            for line in stream.iter_lines():  # read two events, then drop the connection
                if line:
                    field, _, value = line.partition(": ")
                    block[field] = value
                    continue
                seen.append((int(block["id"]), block["event"], json.loads(block["data"])))
                block = {}
                if len(seen) == 2:
                    break
        rest = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(seen[-1][0])})
        everything = client.get(f"/v1/jobs/{job_id}/events")
        after_end = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "999"})
        last_id = _events(everything)[-1][0]
        terminal = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": str(last_id)})
        final = client.get(f"/v1/jobs/{job_id}").json()
    resumed = _events(rest)
    replay = _events(everything)
    assert rest.headers["content-type"].startswith("text/event-stream")
    assert seen + resumed == replay
    assert [e[0] for e in replay] == list(range(1, len(replay) + 1))
    assert [e[2]["status"] for e in replay if e[1] == "status"] == [
        "queued", "running", "succeeded",
    ]  # fmt: skip
    assert replay[-1][2] == final
    progress = [e[2] for e in replay if e[1] == "progress"]
    stages = [p["stage"] for p in progress]
    assert {"preparing", "write", "publishing"} <= set(stages)
    write = [p for p in progress if p["stage"] in ("verify", "publishing")][-1]
    assert write["tensors_done"] == write["tensors_total"] == 9
    assert write["bytes_done"] > 0
    assert terminal.status_code == 204
    assert after_end.status_code == 204  # past the end of a finished job: nothing will come


def test_the_client_streams_events_and_raises_typed_errors(
    hooks_server: Server, models: dict[str, Path]
) -> None:
    with GraftClient(hooks_server.url) as graft:
        source = graft.upload(models["source"])
        again = graft.upload(models["source"])  # found by sha256: not sent again
        target = graft.upload(models["target"])
        job = graft.create_job(source["id"], {"checkpoint": target["id"]}, idempotency_key="c-1")
        same = graft.create_job(source["id"], {"checkpoint": target["id"]}, idempotency_key="c-1")
        events = list(graft.events(job["id"]))
        resumed = list(graft.events(job["id"], last_event_id=events[1].id))
        with pytest.raises(IdempotencyConflictError, match="idempotency-conflict"):
            graft.create_job(source["id"], {"checkpoint": source["id"]}, idempotency_key="c-1")
        with pytest.raises(InvalidRequestError) as refused:
            graft.create_job(source["id"], {"checkpoint": target["id"]}, recipe={"version": 9})
        out = graft.download(job["id"], "weights", hooks_server.root / "client.safetensors")
    assert again == source and same["id"] == job["id"]
    assert events[-1].terminal and events[-1].data["status"] == "succeeded"
    assert resumed == events[2:]
    assert refused.value.type == "invalid-recipe"
    expected = net(0).state_dict()
    weights = load_file(out)
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    log = hooks_server.log.read_text()
    assert log.count(f"GET /v1/checkpoints?sha256={source['sha256']}") >= 2


# -- graft submit ------------------------------------------------------------------------


def _submit(server: Server, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "submit",
         *map(str, args), "--server", server.url],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip


def test_graft_submit_end_to_end(
    hooks_server: Server, models: dict[str, Path], tmp_path: Path
) -> None:
    uploads_before = hooks_server.log.read_text().count("POST /v1/checkpoints")
    run = _submit(
        hooks_server, models["source"], models["target"], "-o", "out.safetensors", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""  # piped: no progress bar
    report = json.loads((tmp_path / "out.report.json").read_text())
    manifest = json.loads((tmp_path / "out.manifest.json").read_text())
    assert report["schema"] == "graft.report/v1" and report["ok"] is True
    assert manifest["schema"] == "graft.manifest/v1"
    expected = net(0).state_dict()
    weights = load_file(tmp_path / "out.safetensors")
    assert weights.keys() == expected.keys()
    assert all(torch.equal(weights[k], expected[k]) for k in expected)
    assert "succeeded" in run.stdout
    # Both files were uploaded by earlier tests: the sha256 look-up skipped both uploads.
    assert hooks_server.log.read_text().count("POST /v1/checkpoints") == uploads_before

    strict = tmp_path / "strict.yaml"
    strict.write_text("version: 1\nstrict: true\ndrop: ['3.*']\n")
    refused = _submit(
        hooks_server, models["source"], models["target"], "-r", strict, "-o", "r.pt", cwd=tmp_path
    )
    assert refused.returncode == 1, refused.stderr
    assert json.loads((tmp_path / "r.report.json").read_text())["ok"] is False
    assert not (tmp_path / "r.pt").exists()

    bad = _submit(hooks_server, models["source"], "arch:no_such_arch", cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stderr.startswith("graft: error: ") and len(bad.stderr.strip().splitlines()) == 1
    missing = _submit(hooks_server, tmp_path / "nope.pth", models["target"], cwd=tmp_path)
    assert missing.returncode == 2
    assert "nope.pth" in missing.stderr and "Traceback" not in missing.stderr


def test_graft_submit_shows_a_progress_bar_on_a_terminal(
    hooks_server: Server, models: dict[str, Path], tmp_path: Path
) -> None:
    import pty

    master, slave = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-c", "from app.cli import main; main()", "submit",
         str(models["source"]), str(models["target"]), "-o", "tty.safetensors",
         "--server", hooks_server.url],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "100"},
        stdin=slave, stdout=slave, stderr=slave,
    )  # fmt: skip
    os.close(slave)
    output = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    os.close(master)
    assert process.wait(180) == 0, output.decode(errors="replace")
    text = output.decode(errors="replace")
    assert "━" in text  # rich's bar
    assert "publishing" in text  # the stage, from the job's progress events
    assert re.search(r"job [0-9a-f]{32}: succeeded", text)
    assert (tmp_path / "tty.safetensors").exists()
