"""The ``MLmodel`` a registered version carries, and the pyfunc loader shipped with it.

The loader is imported here the way MLflow imports it (its ``code/`` folder first on
``sys.path``, ``loader_module`` by name); MLflow's own client loads it against a real server
in ``tests/e2e/test_mlflow_runs.py``.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import save_file
from torch import nn
from typer.testing import CliRunner

from app.cli import cli
from app.engine.architectures import bind_architecture
from app.services.mlflow_model import ModelCard, write_mlflow_model
from app.services.mlflow_pyfunc import load_weights

KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2,
          "num_classes": 5}  # fmt: skip
CARD = ModelCard(
    job_id="job-1", source_sha256="ab" * 32, attestation="model.safetensors.intoto.json"
)


def _state(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = bind_architecture("graft_vit", KWARGS).build("cpu")
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def _convert(tmp_path: Path, *target: str) -> Path:
    """A real Graft output (``graft convert``), so its metadata is Graft's own."""
    source = tmp_path / "source.safetensors"
    save_file(_state(0), source)
    out = tmp_path / "model.safetensors"
    result = CliRunner().invoke(cli, ["convert", str(source), *target, "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def loader_path() -> Iterator[list[str]]:
    saved = list(sys.path)
    yield sys.path
    sys.path[:] = saved
    sys.modules.pop("graft_pyfunc", None)


def _import_loader(code: Path, path: list[str]) -> ModuleType:
    path.insert(0, str(code))  # what mlflow.pyfunc does with the flavor's "code"
    sys.modules.pop("graft_pyfunc", None)
    return importlib.import_module("graft_pyfunc")


def test_an_architecture_output_gets_a_pyfunc_that_runs_its_forward(
    tmp_path: Path, loader_path: list[str]
) -> None:
    weights = _convert(tmp_path, "arch:graft_vit", "--target-kwargs", json.dumps(KWARGS))
    files = write_mlflow_model(tmp_path / "mlmodel", weights, CARD)
    assert [name for name, _ in files] == [
        "MLmodel", "code/graft_pyfunc.py", "requirements.txt", "python_env.yaml",
    ]  # fmt: skip
    mlmodel: dict[str, Any] = yaml.safe_load((tmp_path / "mlmodel" / "MLmodel").read_text())
    pyfunc = mlmodel["flavors"]["python_function"]
    assert (pyfunc["loader_module"], pyfunc["code"], pyfunc["data"]) == (
        "graft_pyfunc", "code", "model.safetensors",
    )  # fmt: skip
    assert pyfunc["env"] == {"virtualenv": "python_env.yaml"}
    graft = mlmodel["flavors"]["graft"]
    assert graft["target"] == {"kind": "architecture", "architecture": "graft_vit",
                               "kwargs": KWARGS}  # fmt: skip
    assert (graft["job_id"], graft["source_sha256"], graft["attestation"]) == (
        "job-1", "ab" * 32, "model.safetensors.intoto.json",
    )  # fmt: skip
    assert json.loads(mlmodel["signature"]["inputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 3, 32, 32]}}
    ]
    assert json.loads(mlmodel["signature"]["outputs"]) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 5]}}
    ]
    requirements = (tmp_path / "mlmodel" / "requirements.txt").read_text()
    assert "torch==2.13.0" in requirements and "graft==" in requirements

    loader = _import_loader(tmp_path / "mlmodel" / "code", loader_path)
    model = loader._load_pyfunc(str(weights))
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    reference = bind_architecture("graft_vit", KWARGS).build("cpu")
    reference.load_state_dict(_state(0), strict=True)
    reference.eval()
    with torch.inference_mode():
        expected = reference(x)
    got = model.predict(x.numpy())
    assert torch.equal(torch.from_numpy(got), expected)  # same process, same kernels: exact
    assert torch.equal(torch.from_numpy(model.predict({"x": x.numpy()})), expected)


def test_a_skeleton_output_gets_graft_metadata_only(tmp_path: Path) -> None:
    skeleton = {"schema": "graft.skeleton/v1",
                "tensors": {k: {"shape": list(v.shape), "dtype": "float32"}
                            for k, v in _state(0).items()}}  # fmt: skip
    (tmp_path / "skeleton.json").write_text(json.dumps(skeleton))
    weights = _convert(tmp_path, str(tmp_path / "skeleton.json"))
    files = write_mlflow_model(tmp_path / "mlmodel", weights, CARD)
    assert [name for name, _ in files] == ["MLmodel"]
    mlmodel = yaml.safe_load((tmp_path / "mlmodel" / "MLmodel").read_text())
    assert list(mlmodel["flavors"]) == ["graft"]
    assert mlmodel["flavors"]["graft"]["target"]["kind"] == "skeleton"
    assert "signature" not in mlmodel


def test_the_loader_refuses_weights_that_name_no_architecture(
    tmp_path: Path, loader_path: list[str]
) -> None:
    weights = _convert(tmp_path, "arch:graft_vit", "--target-kwargs", json.dumps(KWARGS))
    write_mlflow_model(tmp_path / "mlmodel", weights, CARD)
    loader = _import_loader(tmp_path / "mlmodel" / "code", loader_path)
    plain = tmp_path / "plain.safetensors"
    save_file(_state(1), plain)  # not written by Graft: no graft.target
    with pytest.raises(ValueError, match="names none"):
        loader._load_pyfunc(str(plain))


class _Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(4, 3)
        self.head = nn.Linear(3, 4, bias=False)
        self.head.weight = self.embed.weight


def test_load_weights_fills_a_tied_parameter_through_its_twin() -> None:
    model = _Tied()
    weight = torch.arange(12, dtype=torch.float32).reshape(4, 3)
    load_weights(model, {"embed.weight": weight})  # stored once, as transformers does
    assert torch.equal(model.head.weight, weight)
    with pytest.raises(ValueError, match="keys the model lacks"):
        load_weights(_Tied(), {"embed.weight": weight, "extra": weight})
    with pytest.raises(ValueError, match="unfilled"):
        load_weights(nn.Linear(3, 4), {"weight": torch.zeros(4, 3)})
