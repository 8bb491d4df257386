"""A DCP folder as a job's source: uploaded as a set of files, converted by a real runner."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file

from app.client.http import upload_digest
from app.db.session import Database
from app.engine.readers import inspect_source
from app.services.checkpoints import publish_checkpoint
from app.storage import FileBlobStore, StagedFile
from tests.dcp_fixtures import sequential_model
from tests.executors.test_local import _get, _job, _register, _runner


def _register_set(db: Database, store: FileBlobStore, files: list[Path]) -> tuple[str, str]:
    summary = inspect_source({p.name: p for p in files})  # trusted test files
    with store.workdir() as work:
        staged = []
        for path in files:
            part = StagedFile(work / path.name)
            part.write(path.read_bytes())
            part.close()
            staged.append(part)
        with db.transaction() as session:
            checkpoint, _ = publish_checkpoint(session, store, staged, summary)
            return checkpoint.id, checkpoint.format


def _converted_set(
    db: Database, store: FileBlobStore, source: str, files: list[Path], target: Path
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Runs a job from the uploaded set ``source`` (``files``) onto ``target``; asserts it
    succeeded on that set. Returns its report and its weights."""
    job_id = _job(db, source, _register(db, store, target))
    assert _runner(db, store).run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok) == ("succeeded", True), job.error_message
    names = {a.name: a for a in job.artifacts}
    report = json.loads(store.path(names["report"].sha256).read_bytes())
    assert report["source"]["sha256"] == upload_digest(files)
    return report, load_file(store.path(names["weights"].sha256))


def test_a_dcp_folder_converts_in_a_job(sqlite_database: Database, tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    torch.manual_seed(0)
    model = sequential_model()
    state = {"model": model.state_dict(), "optimizer": {"step": torch.tensor(3.0)}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.save(state, checkpoint_id=tmp_path / "run")
    (tmp_path / "run" / "notes.txt").write_text("not part of the checkpoint")
    from app.client.http import _shard_files

    files = _shard_files(tmp_path / "run")
    assert [p.name for p in files] == [".metadata", "__0_0.distcp"]
    source, fmt = _register_set(sqlite_database, store, files)
    assert fmt == "dcp"
    target = tmp_path / "target.pth"
    torch.save(sequential_model().state_dict(), target)
    report, weights = _converted_set(sqlite_database, store, source, files, target)
    assert (report["source"]["format"], report["source"]["entry"]) == ("dcp", "model")
    assert weights.keys() == model.state_dict().keys()
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
