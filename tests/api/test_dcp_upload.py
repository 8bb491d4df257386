"""Uploading a DCP folder's files as one set: inspected in the sandboxed child as ``dcp``."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch.distributed.checkpoint as dcp

from tests.dcp_fixtures import sequential_model


def test_a_dcp_folder_uploads_as_a_set(client, tmp_path: Path) -> None:
    state = {"model": sequential_model().state_dict(), "optimizer": {"lr": 0.1}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=tmp_path / "run")
    paths = sorted((tmp_path / "run").iterdir())
    r = client.post("/v1/checkpoints", files=[("file", (p.name, p.read_bytes())) for p in paths])
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["format"], body["entry"], body["tensors"]) == ("dcp", "model", 6)
    assert sorted(f["filename"] for f in body["files"]) == [".metadata", "__0_0.distcp"]
    inspected = client.get(f"/v1/checkpoints/{body['id']}/inspect")
    assert inspected.status_code == 200, inspected.text
    assert inspected.json()["format"] == "dcp"
    assert [t["shape"] for t in inspected.json()["tensors"]][:2] == [[10, 7], [10]]
