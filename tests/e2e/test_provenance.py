"""One real server (``graft serve`` with its worker processes) signing what it converts:
a job with a parity reference (SPEC §3.2) gets a DSSE-signed attestation (§3.3) that
``graft verify`` accepts with the public key, beside the downloaded weights."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.e2e.conftest import REPO, Server
from tests.executors.parity_models import tiny_mlp

pytestmark = pytest.mark.e2e

TARGET = {"architecture": "tiny_mlp"}
REFERENCE = {"architecture": "tiny_mlp"}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("keys")
    key = ec.generate_private_key(ec.SECP256R1())
    private, public = root / "signing.pem", root / "public.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.fixture(scope="module")
def signing_server(
    tmp_path_factory: pytest.TempPathFactory, keys: tuple[Path, Path]
) -> Iterator[Server]:
    srv = Server(
        tmp_path_factory.mktemp("serve"),
        GRAFT_SIGNING_KEY=str(keys[0]),
        GRAFT_ARCHITECTURES="tiny_mlp=tests.executors.parity_models:tiny_mlp",
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def source(signing_server: Server) -> str:
    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.save(tiny_mlp().state_dict(), buf)
    with signing_server.client() as client:
        r = client.post("/v1/checkpoints?filename=tiny.pth", content=buf.getvalue())
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def test_a_referenced_job_is_signed_and_verifies_offline(
    signing_server: Server, source: str, keys: tuple[Path, Path], tmp_path: Path
) -> None:
    with signing_server.client() as client:
        r = client.post(
            "/v1/jobs", json={"source": source, "target": TARGET, "reference": REFERENCE}
        )
        assert r.status_code == 202, r.text
        job = signing_server.wait(client, r.json()["id"])
        assert (job["status"], job["error"]) == ("succeeded", None), job
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
        assert report["verification"]["parity"]["equal"] is True
        weights = client.get(f"/v1/jobs/{job['id']}/weights")
        attestation = client.get(f"/v1/jobs/{job['id']}/attestation")
        artifacts = {
            a["name"]: a for a in client.get(f"/v1/jobs/{job['id']}/artifacts").json()["data"]
        }
    assert attestation.status_code == 200
    assert attestation.headers["content-type"] == "application/vnd.dsse.envelope.v1+json"
    assert artifacts["attestation"]["url"] == f"/v1/jobs/{job['id']}/attestation"
    envelope = attestation.json()
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    out = tmp_path / f"{job['id']}.safetensors"
    out.write_bytes(weights.content)
    (tmp_path / f"{out.name}.intoto.json").write_bytes(attestation.content)
    verify = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "verify", str(out),
         "--public-key", str(keys[1])],
        cwd=REPO, env=signing_server.env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stderr
    assert verify.stdout.startswith(f"verified {out}: files, tensors, statement, signature")


def test_a_parity_failure_fails_the_job_and_has_no_attestation(
    signing_server: Server, source: str
) -> None:
    recipe = {"version": 1, "transform": [{"match": "0.weight", "op": "transpose"}]}
    with signing_server.client() as client:
        r = client.post(
            "/v1/jobs",
            json={"source": source, "target": TARGET, "reference": REFERENCE, "recipe": recipe},
        )
        assert r.status_code == 202, r.text
        job = signing_server.wait(client, r.json()["id"])
        assert (job["status"], job["error"]["type"]) == ("failed", "parity-failed")
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
        missing = client.get(f"/v1/jobs/{job['id']}/attestation")
    first = report["verification"]["parity"]["first_divergence"]
    assert (first["source_module"], first["target_module"]) == ("0", "0")
    assert (missing.status_code, missing.json()["type"]) == (404, "not-found")
    assert (
        missing.json()["detail"]
        == f"no attestation artifact: job {job['id']} (failed) produced no attestation"
    )
