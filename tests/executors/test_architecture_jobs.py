"""Jobs whose target is a registered architecture, run by a real worker (sandbox child
included), and the device each worker pins."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from app.db.models import Job
from app.db.repositories import JobRepository
from app.db.session import Database
from app.engine.architectures import bind_architecture, parse_architectures
from app.engine.devices import resolve_device
from app.engine.errors import DeviceUnavailableError
from app.storage import FileBlobStore
from tests.executors.test_local import _get, _register, _runner

RESNET = {"depth": 18, "img_size": 32}
PAIR = tuple(parse_architectures("tiny_b=tests.engine.test_architectures:TinyB"))


def _arch_job(db: Database, source: str, spec: dict[str, object], recipe: object = None) -> str:
    with db.transaction() as session:
        job = Job(source_id=source, target=spec, recipe=recipe)
        return JobRepository(session).add(job).id


@pytest.fixture
def setup(sqlite_database: Database, tmp_path: Path) -> tuple[Database, FileBlobStore, str]:
    store = FileBlobStore(tmp_path / "blobs")
    store.ensure()
    torch.manual_seed(0)
    src = tmp_path / "resnet.safetensors"
    save_file(bind_architecture("graft_resnet", RESNET).build("cpu").state_dict(), str(src))
    return sqlite_database, store, _register(sqlite_database, store, src)


def test_an_architecture_job_converts_and_runs_the_model(
    setup: tuple[Database, FileBlobStore, str],
) -> None:
    db, store, source = setup
    kwargs = {**RESNET, "in_chans": 4, "num_classes": 10}
    recipe = {"version": 1, "adapt": [{"match": "conv1.weight", "op": "channels"}]}
    job_id = _arch_job(db, source, {"architecture": "graft_resnet", "kwargs": kwargs}, recipe)
    assert _runner(db, store).run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok, job.device) == ("succeeded", True, "cpu")
    artifacts = {a.name: a for a in job.artifacts}
    report = json.loads(store.path(artifacts["report"].sha256).read_bytes())
    assert report["target"] == {
        "kind": "architecture",
        "name": "arch:graft_resnet",
        "tensors": 122,
        "elements": report["target"]["elements"],
    }
    forward = report["verification"]["forward"]
    assert (forward["ok"], forward["strict_load"], forward["device"]) == (True, True, "cpu")
    assert forward["output_shape"] == [2, 10]
    weights = load_file(store.path(artifacts["weights"].sha256))
    assert weights["conv1.weight"].shape == (64, 4, 7, 7)


def test_an_unknown_architecture_or_kwarg_fails_the_job_with_its_name(
    setup: tuple[Database, FileBlobStore, str],
) -> None:
    db, store, source = setup
    unknown = _arch_job(db, source, {"architecture": "graft_resnot", "kwargs": {}})
    bad = _arch_job(db, source, {"architecture": "graft_resnet", "kwargs": {"widht": 8}})
    runner = _runner(db, store)
    assert runner.run_once() and runner.run_once()
    first, second = _get(db, unknown), _get(db, bad)
    assert (first.status, first.error_type) == ("failed", "invalid-target")
    assert first.error_message is not None and "'graft_resnot'" in first.error_message
    assert (second.status, second.error_type) == ("failed", "invalid-target")
    assert second.error_message == (
        "architecture 'graft_resnet' has no kwarg 'widht'; it takes "
        "depth, num_classes, in_chans, img_size"
    )


def test_the_worker_passes_the_architectures_setting_to_the_engine(
    setup: tuple[Database, FileBlobStore, str], tmp_path: Path
) -> None:
    db, store, _ = setup
    a = tmp_path / "tiny.safetensors"
    from tests.engine.test_architectures import TinyB

    save_file(TinyB().state_dict(), str(a))
    job_id = _arch_job(db, _register(db, store, a), {"architecture": "tiny_b", "kwargs": {}})
    assert _runner(db, store, architectures=PAIR).run_once()
    job = _get(db, job_id)
    assert (job.status, job.ok) == ("succeeded", True)


def test_devices_are_pinned_one_per_worker() -> None:
    assert resolve_device("cpu", index=5) == "cpu"
    assert resolve_device("cuda:1", index=5) == "cuda:1"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        assert resolve_device("auto", index=3) == "cpu"
        with pytest.raises(DeviceUnavailableError, match="'cuda' was asked for, but torch sees no"):
            resolve_device("cuda")
    else:
        assert [resolve_device("auto", index=i) for i in range(2 * count)] == [
            f"cuda:{i % count}" for i in range(2 * count)
        ]
        assert resolve_device("cuda", index=count + 1) == f"cuda:{1 % count}"
