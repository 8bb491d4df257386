"""MLflow as its users use it: from a run to a converted, registered, loadable version.

Real parts only: one ``mlflow server`` and one ``graft serve`` for the module. The run is
logged, and its version registered, by MLflow's own client (its venv, which has no torch);
the registered result is loaded by ``mlflow.pyfunc.load_model`` in a consumer's venv
(MLflow + the pinned CPU torch + Graft, ``make mlflow-torch-venv``), and its ``predict``
is compared with the architecture's forward pass computed here.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from app.engine.architectures import bind_architecture
from app.net.outbound import OutboundPolicy
from app.registry.errors import RegistryNotFoundError
from app.registry.mlflow import MlflowClient
from tests.e2e.conftest import MLFLOW_HOOK_SECRET, REPO, Server
from tests.mlflowserver import MLFLOW, MLFLOW_TORCH_PYTHON, mlflow_python
from tests.plugins import pythonpath

POLICY = OutboundPolicy.from_setting("127.0.0.1:*")
ARCH = "graft_vit"
KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
          "num_classes": 10}  # fmt: skip
MLFLOW_PYTHON = MLFLOW.parent / "python"
SECRET = MLFLOW_HOOK_SECRET

# A training script's last lines, as MLflow users write them: the state dict is logged as an
# artifact of the run, and the version registered from ``runs:/<run>/model``. (MLflow 3's
# ``mlflow.register_model`` resolves a runs:/ URI itself and needs an MLmodel there;
# ``create_model_version`` keeps the ``runs:/`` source, which is what Graft must follow.)
LOG_AND_REGISTER = """
import json, sys
import mlflow
from mlflow import MlflowClient
name, weights = sys.argv[1], sys.argv[2]
mlflow.set_experiment("training")
with mlflow.start_run() as run:
    mlflow.log_param("epochs", 1)
    mlflow.log_artifact(weights, artifact_path="model")
client = MlflowClient()
client.create_registered_model(name)
version = client.create_model_version(
    name, f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
)
print(json.dumps({"run_id": run.info.run_id, "version": version.version,
                  "source": version.source}))
"""

# A consumer: loads the registered version with MLflow's pyfunc, with every pickle loader
# made to fail first, so nothing in the load may unpickle.
LOAD_AND_PREDICT = """
import json, pickle, sys
import numpy as np
import torch

def refused(*args, **kwargs):
    raise AssertionError("something tried to unpickle")

pickle.load = pickle.loads = refused
pickle.Unpickler = refused
torch.load = refused
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(np.load(sys.argv[2]))
np.save(sys.argv[3], out)
meta = model.metadata
print(json.dumps({
    "inputs": meta.get_input_schema().to_dict(),
    "outputs": meta.get_output_schema().to_dict(),
    "flavors": sorted(meta.flavors),
    "graft": meta.flavors["graft"],
    "type": type(out).__name__,
}))
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, mlflow_url: str) -> dict[str, Any]:
    """A run that logged a ``graft_vit`` state dict under ``model/``, registered as
    ``vit-train`` version 1 with source ``runs:/<run>/model``."""
    folder = tmp_path_factory.mktemp("train")
    torch.manual_seed(0)
    model = bind_architecture(ARCH, KWARGS).build("cpu")
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    weights = folder / "weights.safetensors"
    save_file(state, weights)
    done = mlflow_python(
        MLFLOW_PYTHON, LOG_AND_REGISTER, "vit-train", str(weights),
        tracking_uri=mlflow_url, cwd=folder,
    )  # fmt: skip
    seeded = json.loads(done.stdout.strip().splitlines()[-1])
    assert seeded["source"] == f"runs:/{seeded['run_id']}/model"
    return {**seeded, "state": state, "weights": weights}


@pytest.fixture
def registry(mlflow_url: str) -> Iterator[MlflowClient]:
    with MlflowClient(mlflow_url, policy=POLICY) as client:
        yield client


def _forward(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The architecture's own forward pass on ``x``, with ``state`` loaded (the reference)."""
    model = bind_architecture(ARCH, KWARGS).build("cpu")
    model.load_state_dict(state, strict=True)
    model.eval()
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def _job(uri: str, register: dict[str, Any]) -> dict[str, Any]:
    return {
        "source": {"uri": uri},
        "target": {"architecture": ARCH, "kwargs": KWARGS},
        "output": {"format": "safetensors", "register": {"registry": "mlflow", **register}},
    }


def test_runs_uris_resolve_through_the_tracking_server(
    registry: MlflowClient, trained: dict[str, Any], tmp_path: Path
) -> None:
    run = trained["run_id"]
    expected = trained["weights"].read_bytes()
    # A version whose source is runs:/ (refused as outbound-refused before).
    (tmp_path / "version").mkdir()
    fetched = registry.fetch_model("models:/vit-train/1", tmp_path / "version", max_bytes=1 << 24)
    assert [f.path.read_bytes() for f in fetched.files] == [expected]
    # runs:/RUN/FOLDER and runs:/RUN/FILE, both as MLflow names them.
    for i, uri in enumerate([f"runs:/{run}/model", f"runs:/{run}/model/weights.safetensors"]):
        (tmp_path / str(i)).mkdir()
        [got] = registry.fetch_run(uri, tmp_path / str(i), max_bytes=1 << 24)
        assert (got.path.name, got.path.read_bytes()) == ("weights.safetensors", expected)
    with pytest.raises(RegistryNotFoundError):
        registry.fetch_run(f"runs:/{'0' * 32}/model", tmp_path, max_bytes=1 << 24)
    with pytest.raises(RegistryNotFoundError, match="not among"):
        registry.fetch_run(f"runs:/{run}/nothing/here.safetensors", tmp_path, max_bytes=1 << 24)


def test_from_a_run_to_a_registered_version_that_mlflow_pyfunc_loads(
    graft: Server,
    registry: MlflowClient,
    trained: dict[str, Any],
    mlflow_url: str,
    tmp_path: Path,
) -> None:
    run = trained["run_id"]
    results = {}
    with graft.client() as client:
        for uri, alias in [("models:/vit-train/1", "champion"), (f"runs:/{run}/model", "run")]:
            created = client.post("/v1/jobs", json=_job(uri, {"name": "vit-out", "alias": alias}))
            assert created.status_code == 202, created.text
            job = graft.wait(client, created.json()["id"], timeout=180)
            assert job["status"] == "succeeded", job
            assert job["result"]["registry"]["error"] is None, job["result"]
            results[alias] = job
    assert results["champion"]["result"]["source_version"] == "1"
    assert results["champion"]["source"] == results["run"]["source"]  # same bytes, stored once

    version = registry.get_model_version_by_alias("vit-out", "champion")
    listed = [f.path for f in registry.list_artifacts(registry.get_download_uri("vit-out", "1"))]
    assert listed == [
        "MLmodel", "code/graft_pyfunc.py", "manifest.json", "model.safetensors",
        "model.safetensors.intoto.json", "python_env.yaml", "report.json", "requirements.txt",
    ]  # fmt: skip
    assert version.tags["graft.job_id"] == results["champion"]["id"]
    (tmp_path / "out").mkdir()
    [weights] = registry.fetch_model(
        "models:/vit-out@run", tmp_path / "out", max_bytes=1 << 24
    ).files
    converted = load_file(weights.path)
    assert converted.keys() == trained["state"].keys()
    assert all(torch.equal(converted[k], v) for k, v in trained["state"].items())

    # The consumer: mlflow.pyfunc.load_model(...).predict(x) is the forward pass.
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)).numpy()
    np.save(tmp_path / "x.npy", x)
    done = mlflow_python(
        MLFLOW_TORCH_PYTHON, LOAD_AND_PREDICT, "models:/vit-out@champion",
        str(tmp_path / "x.npy"), str(tmp_path / "y.npy"),
        tracking_uri=mlflow_url, cwd=REPO,
    )  # fmt: skip
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    predicted = np.load(tmp_path / "y.npy")
    expected = _forward(trained["state"], x)
    assert loaded["type"] == "ndarray" and predicted.shape == expected.shape == (3, 10)
    # Same torch build, same CPU, same kernels: equal to within 1e-6 (stated tolerance).
    print(f"\npyfunc predict vs forward: max |diff| {np.abs(predicted - expected).max():.3g}")
    np.testing.assert_allclose(predicted, expected, rtol=0, atol=1e-6)
    assert loaded["flavors"] == ["graft", "python_function"]
    assert loaded["graft"]["target"] == {"kind": "architecture", "architecture": ARCH,
                                         "kwargs": KWARGS}  # fmt: skip
    assert loaded["inputs"] == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}
    ]
    assert loaded["outputs"] == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}
    ]


def test_graft_submit_takes_a_runs_uri(
    graft: Server, registry: MlflowClient, trained: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "vit.safetensors"
    done = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "submit",
         f"runs:/{trained['run_id']}/model", f"arch:{ARCH}", "--target-kwargs",
         json.dumps(KWARGS), "--server", graft.url, "-o", str(out),
         "--register", "mlflow:vit-cli@cli"],
        cwd=REPO, env={**os.environ, "PYTHONPATH": pythonpath()}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    converted = load_file(out)
    assert all(torch.equal(converted[k], v) for k, v in trained["state"].items())
    assert registry.get_model_version_by_alias("vit-cli", "cli").version == "1"


def _signed(body: bytes, delivery: str) -> dict[str, str]:
    stamp = str(int(time.time()))
    mac = hmac.new(SECRET.encode(), f"{delivery}.{stamp}.".encode() + body, hashlib.sha256)
    return {
        "Content-Type": "application/json",
        "X-MLflow-Delivery-Id": delivery,
        "X-MLflow-Timestamp": stamp,
        "X-MLflow-Signature": "v1," + base64.b64encode(mac.digest()).decode(),
    }


def test_a_pipeline_converts_a_version_registered_from_a_run(
    graft: Server, registry: MlflowClient, trained: dict[str, Any]
) -> None:
    """The trigger version's source is ``runs:/…`` (as MLflow delivers it)."""
    pipeline = {
        "name": "from-run",
        "trigger": {"registry": "mlflow", "model": "vit-train", "on": "model_version_created"},
        "target": {"architecture": ARCH, "kwargs": KWARGS},
        "output": {"register": {"registry": "mlflow", "name": "vit-auto", "alias": "auto"}},
    }
    data = {"name": "vit-train", "version": "1", "source": trained["source"],
            "run_id": trained["run_id"], "tags": {}}  # fmt: skip
    body = json.dumps({"entity": "model_version", "action": "created", "data": data}).encode()
    with graft.client() as client:
        assert client.post("/v1/pipelines", json=pipeline).status_code == 201
        answer = client.post("/v1/hooks/mlflow", content=body, headers=_signed(body, "run-1"))
        assert answer.status_code == 202, answer.text
        [job_id] = answer.json()["jobs"]
        job = graft.wait(client, job_id, timeout=180)
    assert job["status"] == "succeeded", job
    assert job["source_ref"]["uri"] == "models:/vit-train/1"
    assert job["result"]["registry"]["uri"] == "models:/vit-auto/1"
    assert registry.get_model_version_by_alias("vit-auto", "auto").version == "1"
