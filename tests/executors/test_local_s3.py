"""A conversion job on S3 storage: sources are downloaded to local temp space, outputs
uploaded, and nothing is left on the worker's disk (no shared disk needed)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from app.db.session import Database
from tests.executors.test_local import _get, _job, _net, _register, _runner
from tests.s3server import S3Server
from tests.storage.conftest import s3_store


def test_job_on_s3_storage(sqlite_database: Database, s3_server: S3Server, tmp_path: Path) -> None:
    store = s3_store(s3_server, tmp_path / "scratch")
    src, tgt = tmp_path / "src.pth", tmp_path / "tgt.pth"
    torch.save(_net(0).state_dict(), src)
    torch.save(_net(1).state_dict(), tgt)
    source = _register(sqlite_database, store, src)
    target = _register(sqlite_database, store, tgt)
    job_id = _job(sqlite_database, source, target)
    assert _runner(sqlite_database, store).run_once()
    job = _get(sqlite_database, job_id)
    assert job.status == "succeeded", job.error
    weights = {a.name: a for a in job.artifacts}["weights"]
    store.link_into(weights.sha256, tmp_path / "out.safetensors")
    loaded = load_file(tmp_path / "out.safetensors")
    for key, value in _net(0).state_dict().items():
        assert torch.equal(loaded[key], value), key
    assert list(store.scratch.root.iterdir()) == []
