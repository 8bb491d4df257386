"""Registry integration end to end: a real ``mlflow server`` and a real ``graft serve``.

One MLflow server and one Graft server (API + worker processes) serve the module. Sources
are seeded into MLflow with Graft's own registry client; MLflow's own webhook delivery
starts a pipeline.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

from app.net.outbound import OutboundPolicy
from app.registry.mlflow import MlflowClient
from app.registry.mlflow_publish import VersionRequest, register_version
from tests.e2e.conftest import MLFLOW_HOOK_SECRET, Server
from tests.e2e.helpers import until
from tests.mlflowserver import free_port

SECRET = MLFLOW_HOOK_SECRET
POLICY = OutboundPolicy.from_setting("127.0.0.1:*")


@pytest.fixture
def registry(mlflow_url: str) -> Iterator[MlflowClient]:
    with MlflowClient(mlflow_url, policy=POLICY) as client:
        yield client


def _weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return {"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)}


def _skeleton(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {
        "schema": "graft.skeleton/v1",
        "tensors": {
            k.replace("fc.", "head."): {"shape": list(v.shape), "dtype": "float32"}
            for k, v in tensors.items()
        },
    }


RECIPE = {"version": 1, "rename": [{"prefix": "fc.", "to": "head."}]}


def _seed(
    registry: MlflowClient, folder: Path, *, name: str, tensors: Any, alias: str | None = None
) -> str:
    """Register ``tensors`` (a state dict, or an ``nn.Module`` pickled whole) in MLflow."""
    folder.mkdir(parents=True)
    if isinstance(tensors, nn.Module):
        weights = folder / "model.pth"
        torch.save(tensors, weights)  # what mlflow.pytorch does: a pickled module
    else:
        weights = folder / "model.safetensors"
        save_file(tensors, weights)
    (folder / "report.json").write_text("{}")
    (folder / "manifest.json").write_text("{}")
    done = register_version(
        registry,
        VersionRequest(
            name=name,
            job_id=f"seed-{uuid.uuid4().hex}",
            weights=[weights],
            report=folder / "report.json",
            manifest=folder / "manifest.json",
            source_sha256="00" * 32,
            alias=alias,
        ),
    )
    return done.version


def _job(source: Any, tensors: dict[str, torch.Tensor], **output: Any) -> dict[str, Any]:
    return {
        "source": source,
        "target": {"skeleton": _skeleton(tensors)},
        "recipe": RECIPE,
        "output": {"format": "safetensors", **output},
    }


def test_job_by_models_reference_registered_back_with_alias(
    graft: Server, registry: MlflowClient, tmp_path: Path
) -> None:
    tensors = _weights(0)
    _seed(registry, tmp_path / "src", name="resnet-src", tensors=tensors, alias="champion")
    started = time.monotonic()
    with graft.client() as client:
        register = {"registry": "mlflow", "name": "resnet-graft", "alias": "prod",
                    "tags": {"team": "vision"}}  # fmt: skip
        body = _job({"uri": "models:/resnet-src@champion"}, tensors, register=register)
        created = client.post("/v1/jobs", json=body)
        assert created.status_code == 202, created.text
        job = graft.wait(client, created.json()["id"])
        elapsed = time.monotonic() - started
        assert job["status"] == "succeeded", job
        assert job["result"] == {
            "registry": {"uri": "models:/resnet-graft/1", "version": "1", "error": None},
            "source_version": "1",
        }
        assert job["source_ref"] == {"uri": "models:/resnet-src@champion", "path": None}
        served = client.get(f"/v1/jobs/{job['id']}/weights").content
        source = client.get(f"/v1/checkpoints/{job['source']}").json()

        # The same reference again: fetched again, stored once.
        again = graft.wait(client, client.post("/v1/jobs", json=_job(
            {"uri": "models:/resnet-src/1"}, tensors)).json()["id"])  # fmt: skip
        assert again["status"] == "succeeded", again
        assert again["source"] == job["source"]
        assert client.get("/v1/checkpoints").json()["count"] == 1

    # Baseline in the same run: the same conversion from an upload, by id, not registered.
    started = time.monotonic()
    with graft.client() as client:
        data = (tmp_path / "src" / "model.safetensors").read_bytes()
        upload = client.post("/v1/checkpoints", files={"file": ("model.safetensors", data)})
        assert upload.status_code in (200, 201), upload.text
        assert upload.json()["id"] == job["source"]  # the fetched bytes were recorded as this
        created = client.post("/v1/jobs", json=_job(upload.json()["id"], tensors))
        plain = graft.wait(client, created.json()["id"])
        assert plain["status"] == "succeeded", plain
        assert client.get(f"/v1/jobs/{plain['id']}/weights").content == served
    baseline = time.monotonic() - started
    print(f"\nmodels:/ job registered back: {elapsed:.2f} s; upload + job by id: {baseline:.2f} s")
    version = registry.get_model_version_by_alias("resnet-graft", "prod")
    assert version.version == "1"
    assert version.tags["graft.job_id"] == job["id"]
    assert version.tags["graft.source_sha256"] == source["sha256"]
    assert version.tags["team"] == "vision"
    fetched = registry.fetch_model("models:/resnet-graft@prod", tmp_path, max_bytes=1 << 20)
    assert [f.path.name for f in fetched.files] == ["model.safetensors"]
    assert fetched.files[0].path.read_bytes() == served  # bit-exact in MLflow
    loaded = load_file(fetched.files[0].path)
    assert set(loaded) == {"head.weight", "head.bias"}
    assert torch.equal(loaded["head.weight"], tensors["fc.weight"])
    assert torch.equal(loaded["head.bias"], tensors["fc.bias"])


def test_reserved_alias_and_unknown_scheme_refused_at_creation(graft: Server) -> None:
    tensors = _weights(1)
    with graft.client() as client:
        for alias in ("latest", "v3", "V12"):
            register = {"registry": "mlflow", "name": "x", "alias": alias}
            answer = client.post("/v1/jobs", json=_job({"uri": "models:/a/1"}, tensors,
                                                       register=register))  # fmt: skip
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"] == "invalid-job"
            assert "reserved" in answer.json()["detail"]
        answer = client.post("/v1/jobs", json=_job({"uri": "file:///etc/passwd"}, tensors))
        assert (answer.status_code, answer.json()["type"]) == (422, "invalid-job")
        answer = client.post("/v1/jobs", json=_job({"uri": "s3://bucket/folder/"}, tensors))
        assert (answer.status_code, answer.json()["type"]) == (422, "invalid-job")
        assert "s3://BUCKET/KEY naming one object" in answer.json()["detail"]


class _Listener:
    """A TCP server that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()


def test_disallowed_host_refused_before_any_connection(graft: Server) -> None:
    listener = _Listener()
    tensors = _weights(2)
    with graft.client() as client:
        for uri in (f"http://localhost:{listener.port}/w.safetensors",
                    "https://weights.example.com/w.safetensors"):  # fmt: skip
            answer = client.post("/v1/jobs", json=_job({"uri": uri}, tensors))
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"] == "outbound-refused"
    # The positive event: a marker connection of our own, made after both refusals. Accepts
    # come in arrival order, so once the marker is accepted any connection the server had
    # opened would have been counted before it.
    socket.create_connection(("127.0.0.1", listener.port)).close()
    until(lambda: listener.accepted >= 1, timeout=30)
    assert listener.accepted - 1 == 0
    listener.sock.close()


def test_pickled_module_is_refused_as_unsafe(
    graft: Server, registry: MlflowClient, tmp_path: Path
) -> None:
    _seed(registry, tmp_path / "pickled", name="pickled", tensors=nn.Linear(3, 4))
    with graft.client() as client:
        body = _job({"uri": "models:/pickled/1"}, _weights(3))
        job = graft.wait(client, client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "failed"
    assert job["error"]["type"] == "unsafe-checkpoint", job["error"]


def test_registry_down_fails_the_job_clearly(tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    srv = Server(tmp_path, GRAFT_MLFLOW_TRACKING_URI=down, GRAFT_OUTBOUND_ALLOW="mlflow",
                 GRAFT_WORKERS="1")  # fmt: skip
    srv.start()
    try:
        with srv.client() as client:
            body = _job({"uri": "models:/anything/1"}, _weights(4))
            job = srv.wait(client, client.post("/v1/jobs", json=body).json()["id"])
            assert job["status"] == "failed"
            assert job["error"]["type"] == "registry-unavailable"
            assert "cannot reach MLflow" in job["error"]["message"]
            assert job["error"]["message"].endswith("(safe to retry: submit the job again)")
            assert job["source"] is None
            assert client.get("/v1/checkpoints").json()["count"] == 0  # nothing half-recorded
    finally:
        srv.stop()


# ---- pipelines and webhooks ----------------------------------------------------------------


def _pipeline(
    name: str, model: str, into: str, on: str = "model_version_created"
) -> dict[str, Any]:
    return {
        "name": name,
        "trigger": {"registry": "mlflow", "model": model, "on": on},
        "target": {"skeleton": _skeleton(_weights(0))},
        "recipe": RECIPE,
        "output": {"register": {"registry": "mlflow", "name": into, "alias": "auto"}},
    }


def test_pipeline_crud(graft: Server) -> None:
    with graft.client() as client:
        created = client.post("/v1/pipelines", json=_pipeline("crud", "m-crud", "m-crud-out"))
        assert created.status_code == 201, created.text
        assert created.headers["location"] == "/v1/pipelines/crud"
        again = client.post("/v1/pipelines", json=_pipeline("crud", "m-crud", "m-crud-out"))
        assert (again.status_code, again.json()["type"]) == (409, "conflict")
        loop = client.post("/v1/pipelines", json=_pipeline("loop", "m-crud", "m-crud"))
        assert (loop.status_code, loop.json()["type"]) == (422, "invalid-job")
        assert "own trigger model" in loop.json()["detail"]
        replaced = client.put(
            "/v1/pipelines/crud", json=_pipeline("crud", "m-crud", "other-out", on="alias:prod")
        )
        assert replaced.status_code == 200, replaced.text
        got = client.get("/v1/pipelines/crud").json()
        assert got["trigger"]["on"] == "alias:prod"
        assert got["output"]["register"]["name"] == "other-out"
        names = [p["name"] for p in client.get("/v1/pipelines").json()["data"]]
        assert "crud" in names
        assert client.delete("/v1/pipelines/crud").status_code == 204
        assert client.get("/v1/pipelines/crud").status_code == 404


def _signed(body: bytes, *, delivery: str, secret: str = SECRET, ts: int | None = None) -> dict:
    stamp = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(secret.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


def _event(model: str, version: str) -> bytes:
    data = {"name": model, "version": version, "source": "x", "run_id": "r", "tags": {}}
    return json.dumps({"entity": "model_version", "action": "created", "data": data}).encode()


def test_bad_signature_and_old_timestamp_get_401(graft: Server) -> None:
    body = _event("m-sig", "1")
    with graft.client() as client:
        cases = [
            _signed(body, delivery="d-1", secret="wrong"),
            _signed(body, delivery="d-2", ts=int(time.time()) - 301),
            {**_signed(body, delivery="d-3"), "X-MLflow-Delivery-Id": "d-other"},
            {"Content-Type": "application/json"},
        ]
        for headers in cases:
            answer = client.post("/v1/hooks/mlflow", content=body, headers=headers)
            assert answer.status_code == 401, answer.text
            assert answer.json()["type"] == "unauthorized"


def test_duplicate_delivery_starts_one_job(
    graft: Server, registry: MlflowClient, tmp_path: Path
) -> None:
    version = _seed(registry, tmp_path / "dup", name="m-dup", tensors=_weights(5))
    with graft.client() as client:
        assert client.post("/v1/pipelines", json=_pipeline("dup", "m-dup", "m-dup-out")).is_success
        body = _event("m-dup", version)
        first = client.post("/v1/hooks/mlflow", content=body, headers=_signed(body, delivery="x1"))
        second = client.post("/v1/hooks/mlflow", content=body, headers=_signed(body, delivery="x1"))
        assert first.status_code == second.status_code == 202
        assert first.json()["duplicate"] is False and second.json()["duplicate"] is True
        assert len(first.json()["jobs"]) == 1
        assert second.json()["jobs"] == first.json()["jobs"]
        uri = f"models:/m-dup/{version}"
        listed = client.get("/v1/jobs?limit=1000").json()["data"]
        jobs = [j for j in listed if j["pipeline"] and j["source_ref"]["uri"] == uri]
        assert [j["id"] for j in jobs] == first.json()["jobs"]
        job = graft.wait(client, jobs[0]["id"])
        assert job["status"] == "succeeded", job
        assert job["result"]["registry"] == {
            "uri": "models:/m-dup-out/1", "version": "1", "error": None,
        }  # fmt: skip


def test_pipeline_fires_on_a_real_mlflow_webhook(
    graft: Server, registry: MlflowClient, tmp_path: Path
) -> None:
    with graft.client() as client:
        answer = client.post("/v1/pipelines", json=_pipeline("auto", "m-live", "m-live-out"))
        assert answer.status_code == 201, answer.text
    registry.call(
        "POST",
        "webhooks",
        json={
            "name": "graft",
            "url": f"{graft.url}/v1/hooks/mlflow",
            "events": [{"entity": "MODEL_VERSION", "action": "CREATED"}],
            "secret": SECRET,
        },
    )
    time.sleep(1.5)  # MLFLOW_WEBHOOK_CACHE_TTL=1 in the fixture
    tensors = _weights(6)
    started = time.monotonic()
    _seed(registry, tmp_path / "live", name="m-live", tensors=tensors)

    def converted() -> Any:
        try:
            return registry.get_model_version_by_alias("m-live-out", "auto")
        except Exception:
            return None

    try:
        version = until(converted, timeout=120)
    except TimeoutError:
        version = None
    elapsed = time.monotonic() - started
    assert version is not None, (graft.root / "server.log").read_text()[-3000:]
    print(f"\nMLflow version -> webhook -> pipeline job -> converted version: {elapsed:.2f} s")
    (tmp_path / "out").mkdir()
    fetched = registry.fetch_model("models:/m-live-out@auto", tmp_path / "out", max_bytes=1 << 20)
    loaded = load_file(fetched.files[0].path)
    assert torch.equal(loaded["head.weight"], tensors["fc.weight"])
    assert torch.equal(loaded["head.bias"], tensors["fc.bias"])
    with graft.client() as client:
        job = client.get(f"/v1/jobs/{version.tags['graft.job_id']}").json()
    assert job["source_ref"]["uri"] == "models:/m-live/1"
    assert job["pipeline"] == answer.json()["id"]


# ---- a registration retried after the registry failed --------------------------------------


class _Forwarder:
    """A TCP forwarder from ``port`` to the MLflow server: until it starts, nothing listens
    there, so the registry is unreachable (connection refused)."""

    def __init__(self, port: int, upstream: str) -> None:
        host, _, up_port = upstream.removeprefix("http://").partition(":")
        self.upstream = (host, int(up_port))
        self.sock = socket.create_server(("127.0.0.1", port))
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.upstream)
            for a, b in ((conn, up), (up, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.sock.close()


def test_registry_retry_after_the_registry_was_down(
    mlflow_url: str, registry: MlflowClient, tmp_path: Path
) -> None:
    port = free_port()  # MLflow's address as Graft knows it: refused until the forwarder runs
    srv = Server(tmp_path, GRAFT_MLFLOW_TRACKING_URI=f"http://127.0.0.1:{port}",
                 GRAFT_OUTBOUND_ALLOW="mlflow", GRAFT_WORKERS="1")  # fmt: skip
    srv.start()
    forwarder: _Forwarder | None = None
    try:
        with srv.client() as client:
            upload = client.post("/v1/checkpoints", files={"file": ("m.safetensors", _bytes(5))})
            assert upload.status_code == 201, upload.text
            body = _job(upload.json()["id"], _weights(5),
                        register={"registry": "mlflow", "name": "retried-e2e"})  # fmt: skip
            job = srv.wait(client, client.post("/v1/jobs", json=body).json()["id"])
            assert job["status"] == "succeeded", job
            assert job["result"]["registry"]["error"]["type"] == "registry-unavailable"
            assert client.get(f"/v1/jobs/{job['id']}/weights").status_code == 200
            plain = client.post("/v1/jobs", json=_job(upload.json()["id"], _weights(5)))
            refused = client.post(f"/v1/jobs/{plain.json()['id']}/registry-retry")
            assert (refused.status_code, refused.json()["type"]) == (409, "conflict")

            forwarder = _Forwarder(port, mlflow_url)  # the registry is back
            url = f"/v1/jobs/{job['id']}/registry-retry"
            first, second = client.post(url), client.post(url)
            assert first.status_code == 202, first.text
            assert first.json()["status"] == "succeeded"
            assert second.status_code in (200, 202), second.text  # in flight, or done already

            def registered() -> dict[str, Any] | None:
                got = client.get(f"/v1/jobs/{job['id']}").json()
                return (
                    got if got["stage"] is None and not got["result"]["registry"]["error"] else None
                )

            done = until(registered, timeout=60)
            assert done["result"]["registry"] == {
                "uri": "models:/retried-e2e/1", "version": "1", "error": None,
            }  # fmt: skip
            again = client.post(url)
            assert again.status_code == 200
            assert again.json()["result"]["registry"] == done["result"]["registry"]
    finally:
        if forwarder is not None:
            forwarder.close()
        srv.stop()
    body = registry.call("GET", "model-versions/search", params={"filter": "name='retried-e2e'"})
    versions = body.get("model_versions", [])
    assert [(v["version"], _tag(v, "graft.job_id")) for v in versions] == [("1", job["id"])]


def _bytes(seed: int) -> bytes:
    return save(_weights(seed))


def _tag(version: dict[str, Any], key: str) -> str | None:
    return next((t["value"] for t in version.get("tags", []) if t["key"] == key), None)
