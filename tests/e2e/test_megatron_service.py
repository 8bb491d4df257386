"""A Megatron-LM checkpoint folder through a real ``graft serve``: ``graft submit`` uploads
its rank files as one set under their relative names (``mp_rank_00_000/model_optim_rng.pt``,
all of them ``model_optim_rng.pt`` by name alone), and a job whose source is that uploaded set
converts it, bit for bit, to the unsplit model Megatron-Core itself gathered.

The TP 2 x PP 2 fixture is written by Megatron-Core 0.19.2 (``tests/megatron_fixtures.py``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from app.client.http import GraftClient, upload_digest
from app.client.sets import upload_files
from app.client.tus import TusOptions
from app.engine.readers import open_source
from tests.e2e.conftest import REPO, Server
from tests.megatron_fixtures import megatron_checkpoint, unsplit_state

RANKS = [
    "mp_rank_00_000/model_optim_rng.pt",
    "mp_rank_00_001/model_optim_rng.pt",
    "mp_rank_01_000/model_optim_rng.pt",
    "mp_rank_01_001/model_optim_rng.pt",
]


@pytest.fixture(scope="module")
def megatron(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = megatron_checkpoint("gpt")
    expected = unsplit_state(torch.load(folder / "reference.pt", weights_only=True))
    target = tmp_path_factory.mktemp("megatron-target") / "target.pt"
    torch.save({k: torch.zeros_like(v) for k, v in expected.items()}, target)
    return {"legacy": folder / "legacy", "expected": expected, "target": target}


def _submit(server: Server, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "submit",
         *map(str, args), "--server", server.url],
        cwd=cwd, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def _assert_unsplit(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert sorted(weights) == sorted(expected)
    for key, want in expected.items():
        assert weights[key].dtype == want.dtype and torch.equal(weights[key], want), key


def test_graft_submit_converts_a_megatron_folder(
    server: Server, megatron: dict[str, Any], tmp_path: Path
) -> None:
    run = _submit(
        server, megatron["legacy"], megatron["target"], "-o", "model.safetensors", cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr + server.log.read_text()[-3000:]
    _assert_unsplit(load_file(tmp_path / "model.safetensors"), megatron["expected"])
    report = json.loads((tmp_path / "model.report.json").read_text())
    assert report["source"]["format"] == "megatron"
    assert report["verification"]["equal"] == len(megatron["expected"])
    # the server holds the set under the rank files' relative names, and names it by them
    named = upload_files(megatron["legacy"])
    digest = upload_digest([p for _, p in named], [n for n, _ in named])
    assert report["source"]["sha256"] == digest
    with open_source(megatron["legacy"]) as source:  # `graft convert` names it the same
        assert source.sha256() == digest
    with server.client() as client:
        found = client.get("/v1/checkpoints", params={"sha256": digest}).json()["data"]
    assert [f["filename"] for f in found[0]["files"]] == RANKS
    assert (found[0]["format"], found[0]["filename"]) == ("megatron", RANKS[0])


def test_a_job_converts_an_uploaded_megatron_set(
    server: Server, megatron: dict[str, Any], tmp_path: Path
) -> None:
    folder = megatron["legacy"] / "iter_0000007"
    with server.client() as client:
        handles = [(name, (folder / name).open("rb")) for name in RANKS]
        try:
            uploaded = client.post(
                "/v1/checkpoints", files=[("file", (n, h)) for n, h in reversed(handles)]
            )
        finally:
            for _, h in handles:
                h.close()
        assert uploaded.status_code in (200, 201), uploaded.text
        record = uploaded.json()
        assert record["format"] == "megatron"
        inspected = client.get(f"/v1/checkpoints/{record['id']}/inspect").json()
        assert sorted(inspected["paths"]) == RANKS
        layout = inspected["layout"]
        assert (layout["tensor_parallel"], layout["pipeline_parallel"]) == (2, 2)
        assert layout["iteration"] == 7  # read from the rank files: the names hold no iter_N
        with megatron["target"].open("rb") as f:
            target = client.post("/v1/checkpoints", files={"file": ("target.pt", f)}).json()
        created = client.post(
            "/v1/jobs", json={"source": record["id"], "target": {"checkpoint": target["id"]}}
        )
        assert created.status_code == 202, created.text
        job = server.wait(client, created.json()["id"], timeout=240)
        assert job["status"] == "succeeded", (job["error"], server.log.read_text()[-3000:])
        (tmp_path / "w.safetensors").write_bytes(
            client.get(f"/v1/jobs/{job['id']}/weights").content
        )
    _assert_unsplit(load_file(tmp_path / "w.safetensors"), megatron["expected"])


@pytest.mark.parametrize("how", ["graft submit", "tus"])
def test_a_tp1_checkpoint_uploads_as_one_rank_file(
    server: Server, how: str, tmp_path: Path
) -> None:
    """A TP 1 x PP 1 run's one rank file (``mp_rank_00/``), sent as one file that keeps its
    rank folder in its name: in one POST by ``graft submit``, or resumable over tus."""
    folder = megatron_checkpoint("gpt")
    expected = unsplit_state(torch.load(folder / "reference.pt", weights_only=True))
    template = tmp_path / "target.pt"
    torch.save({k: torch.zeros_like(v) for k, v in expected.items()}, template)
    out = tmp_path / "tp1.safetensors"
    if how == "graft submit":
        run = _submit(server, folder / "tp1", template, "-o", out, cwd=tmp_path)
        assert run.returncode == 0, run.stderr + server.log.read_text()[-3000:]
    else:
        named = upload_files(folder / "tp1")
        digest = upload_digest([p for _, p in named], [n for n, _ in named])
        with server.client() as http:  # sent again, not found: over tus this time
            for found in http.get("/v1/checkpoints", params={"sha256": digest}).json()["data"]:
                assert http.delete(f"/v1/checkpoints/{found['id']}").status_code == 204
        tus = TusOptions(threshold=1024, part_size=1 << 20, state_dir=tmp_path / "tus")
        with GraftClient(server.url, tus=tus) as client:
            record = client.upload(folder / "tp1")
            assert [f["filename"] for f in record["files"]] == ["mp_rank_00_000/model_optim_rng.pt"]
            assert record["format"] == "megatron"
            target = client.upload(template)
            job = client.create_job(record["id"], {"checkpoint": target["id"]})
            for event in client.events(job["id"]):
                if event.terminal:
                    job = event.data
            assert job["status"] == "succeeded", (job["error"], server.log.read_text()[-3000:])
            client.download(job["id"], "weights", out)
    _assert_unsplit(load_file(out), expected)


def test_a_set_name_that_climbs_out_is_a_one_line_400(server: Server) -> None:
    with server.client() as client:
        r = client.post(
            "/v1/checkpoints",
            files=[("file", ("mp_rank_00_000/../../model_optim_rng.pt", b"x" * 8))],
        )
    assert r.status_code == 400, r.text
    assert r.json()["type"] == "bad-request"
    assert r.json()["detail"].endswith("'..' may not climb out of the set")


def test_one_rank_file_uploaded_alone_is_read_as_a_megatron_rank(
    server: Server, megatron: dict[str, Any]
) -> None:
    """A single file named by its rank folder (as a TP 1 x PP 1 checkpoint is uploaded, over
    tus when large) is opened as a Megatron set: here, one rank of four, so refused so."""
    rank = megatron["legacy"] / "iter_0000007" / RANKS[2]
    with server.client() as client:
        r = client.post("/v1/checkpoints", params={"filename": RANKS[2]}, content=rank.read_bytes())
    assert r.status_code == 422, r.text
    assert r.json()["type"] == "unreadable-checkpoint"
    assert "args say TP 2 x PP 2, but the folder holds 1 rank files" in r.json()["detail"]


def test_graft_submit_of_a_folder_whose_tracker_lies_exits_2(
    server: Server, megatron: dict[str, Any], tmp_path: Path
) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("9")
    run = _submit(server, tmp_path / "ckpt", megatron["target"], cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr == (
        f"graft: error: {tmp_path / 'ckpt'}: latest_checkpointed_iteration.txt names "
        "iteration '9', which this folder does not hold\n"
    )


def test_graft_submit_converts_a_torch_dist_folder(server: Server, tmp_path: Path) -> None:
    """A training run's ``--ckpt-format torch_dist`` save, named by its tracker file."""
    folder = megatron_checkpoint("gpt")
    names = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    names["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    expected = {}
    for key, value in unsplit_state(torch.load(folder / "reference.pt", weights_only=True)).items():
        for local, sharded in names.items():  # Megatron's sharded names for the local spec
            key = key.replace(local, sharded)
        expected[key] = value
    template = tmp_path / "target.pt"
    torch.save({k: torch.zeros_like(v) for k, v in expected.items()}, template)
    run = _submit(server, folder / "training", template, "-o", "dist.safetensors", cwd=tmp_path)
    assert run.returncode == 0, run.stderr + server.log.read_text()[-3000:]
    _assert_unsplit(load_file(tmp_path / "dist.safetensors"), expected)
    report = json.loads((tmp_path / "dist.report.json").read_text())
    assert report["source"]["format"] == "dcp"
    with server.client() as client:
        found = client.get("/v1/checkpoints", params={"sha256": report["source"]["sha256"]})
    files = [f["filename"] for f in found.json()["data"][0]["files"]]
    assert files == [".metadata", *(f"__{r}_0.distcp" for r in range(4)), "metadata.json"]
