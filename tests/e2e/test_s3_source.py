"""``s3://`` sources end to end: a real S3 server (``rclone serve s3``) holding both the source
and Graft's own blob store, and a real ``graft serve``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from safetensors.torch import load, save

from tests.e2e.conftest import Server
from tests.s3server import S3Server

RECIPE = {"version": 1, "rename": [{"prefix": "fc.", "to": "head."}]}
SKELETON = {
    "schema": "graft.skeleton/v1",
    "tensors": {
        "head.weight": {"shape": [4, 3], "dtype": "float32"},
        "head.bias": {"shape": [4], "dtype": "float32"},
    },
}


@pytest.fixture(scope="module")
def graft(tmp_path_factory: pytest.TempPathFactory, s3_server: S3Server) -> Iterator[Server]:
    store = s3_server.create_bucket("graft-store")
    srv = Server(
        tmp_path_factory.mktemp("graft-s3"),
        GRAFT_STORAGE_URL=f"s3://{store}/deploy",
        GRAFT_S3_ENDPOINT_URL=s3_server.endpoint_url,
        AWS_ACCESS_KEY_ID=s3_server.access_key,
        AWS_SECRET_ACCESS_KEY=s3_server.secret_key,
        GRAFT_S3_SOURCE_ALLOW="models,graft-store",
        GRAFT_WORKERS="1",
    )
    srv.start()
    yield srv
    srv.stop()


def _job(uri: str) -> dict[str, Any]:
    return {"source": {"uri": uri}, "target": {"skeleton": SKELETON}, "recipe": RECIPE}


def test_an_s3_source_is_fetched_recorded_and_converted(graft: Server, s3_server: S3Server) -> None:
    torch.manual_seed(7)
    tensors = {"fc.weight": torch.randn(4, 3), "fc.bias": torch.randn(4)}
    bucket = s3_server.create_bucket("models")
    s3_server.client().put_object(Bucket=bucket, Key="team/w.safetensors", Body=save(tensors))
    with graft.client() as client:
        created = client.post("/v1/jobs", json=_job(f"s3://{bucket}/team/w.safetensors"))
        job = graft.wait(client, created.json()["id"])
        assert job["status"] == "succeeded", job
        checkpoint = client.get(f"/v1/checkpoints/{job['source']}").json()
        assert checkpoint["filename"] == "w.safetensors"
        out = load(client.get(f"/v1/jobs/{job['id']}/weights").content)
        assert torch.equal(out["head.weight"], tensors["fc.weight"])
        assert torch.equal(out["head.bias"], tensors["fc.bias"])

        created = client.post("/v1/jobs", json=_job(f"s3://{bucket}/nope.pt"))
        missing = graft.wait(client, created.json()["id"])
        assert missing["status"] == "failed"
        assert missing["error"]["type"] == "not-found"


def test_a_bucket_off_the_allow_list_is_refused_at_creation(graft: Server) -> None:
    with graft.client() as client:
        answer = client.post("/v1/jobs", json=_job("s3://corp-private/secret/model.safetensors"))
        assert (answer.status_code, answer.json()["type"]) == (422, "outbound-refused")
        assert "GRAFT_S3_SOURCE_ALLOW" in answer.json()["detail"]


def test_the_blob_store_itself_is_not_a_source(graft: Server) -> None:
    with graft.client() as client:
        for uri in ("s3://graft-store/deploy/blobs/ab/cdef", "s3://graft-store/deploy"):
            answer = client.post("/v1/jobs", json=_job(uri))
            assert answer.status_code == 422, answer.text
            assert answer.json()["type"] == "outbound-refused"
