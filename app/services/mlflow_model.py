"""The ``MLmodel`` a registered version carries, so MLflow's own clients can load it.

A version Graft registers holds safetensors weights, never a pickled module. Its ``MLmodel``
has two flavors:

- ``python_function``: ``loader_module: graft_pyfunc``, shipped as source in ``code/`` (see
  :mod:`app.services.mlflow_pyfunc`), with ``data: model.safetensors``. Loading builds the
  registered architecture named in the weights' own ``graft.target`` metadata and loads the
  weights into it, so ``mlflow.pyfunc.load_model("models:/NAME@ALIAS").predict(array)`` runs
  the model's forward pass. It needs Graft, torch and safetensors in the consumer's
  environment: ``requirements.txt`` and ``python_env.yaml`` say so. Written only when the
  weights are safetensors converted into a registered architecture;
- ``graft``: what was converted and how (the target, the weights file, the report, manifest
  and attestation beside it, the source's sha256, the job), always written, so MLflow shows
  the provenance even where no pyfunc can be built (a template or skeleton target, a
  ``.pt`` output).

The signature comes from the architecture's example input and output shape (batch left
free, ``-1``), so MLflow checks what ``predict`` is given. Building the architecture runs its
factory (a plug-in's code, library imports that hold the GIL for seconds), so it happens in a
sandboxed child, as conversions do, never in the worker itself.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from app import __version__
from app.engine.architectures import ArchitectureRef, bind_architecture
from app.errors import GraftError
from app.sandbox.runner import Limits, run_sandboxed
from app.services import mlflow_pyfunc

__all__ = ["LOADER_MODULE", "ModelCard", "signature_in_child", "write_mlflow_model"]

logger = logging.getLogger(__name__)

LOADER_MODULE = "graft_pyfunc"
_REQUIREMENTS = (
    "# Loading this model with mlflow.pyfunc builds Graft's registered architecture:\n"
    "# install Graft itself (pip install <Graft's source or wheel>) beside these.\n"
    "torch==2.13.0\n"
    "safetensors>=0.4\n"
    "numpy>=1.26\n"
    f"graft=={__version__}\n"
)


@dataclass(frozen=True)
class ModelCard:
    """What the ``graft`` flavor records beside the weights.

    Attributes:
        job_id: the job that converted them.
        source_sha256: the source checkpoint's digest.
        report: the report's file name in the version; manifest and attestation likewise
            (``None``: not logged).
    """

    job_id: str
    source_sha256: str
    report: str = "report.json"
    manifest: str = "manifest.json"
    attestation: str | None = None


def write_mlflow_model(
    folder: Path,
    weights: Path,
    card: ModelCard,
    *,
    architectures: Sequence[ArchitectureRef] = (),
) -> list[tuple[str, Path]]:
    """Write ``MLmodel`` (and, for a pyfunc, its loader, requirements and environment).

    Args:
        folder: where the files are written (beside nothing else of the version's).
        weights: the registered weights file (its name is the ``data`` path).
        card: the provenance the ``graft`` flavor records.
        architectures: more architectures (``GRAFT_ARCHITECTURES``) to build the signature.

    Returns:
        ``(artifact path, local file)`` pairs to upload next to the weights.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = _target(weights)
    graft_flavor: dict[str, Any] = {
        "graft_version": __version__,
        "weights": weights.name,
        "format": "safetensors" if weights.suffix == ".safetensors" else "torch",
        "target": target,
        "job_id": card.job_id,
        "source_sha256": card.source_sha256,
        "report": card.report,
        "manifest": card.manifest,
        **({"attestation": card.attestation} if card.attestation else {}),
    }
    mlmodel: dict[str, Any] = {
        "flavors": {"graft": graft_flavor},
        "model_size_bytes": weights.stat().st_size,
        "model_uuid": uuid.uuid4().hex,
        "utc_time_created": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S.%f"),
    }
    files: list[tuple[str, Path]] = []
    if target is not None and target.get("kind") == "architecture":
        mlmodel["flavors"]["python_function"] = _pyfunc_flavor(weights.name)
        signature = _signature(target, architectures)
        if signature is not None:
            mlmodel["signature"] = signature
        files += _pyfunc_files(folder)
    path = folder / "MLmodel"
    path.write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    return [("MLmodel", path), *files]


def _target(weights: Path) -> dict[str, Any] | None:
    """The weights' own ``graft.target`` (safetensors only; ``None`` otherwise)."""
    if weights.suffix != ".safetensors":
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            meta = f.metadata() or {}
        target = json.loads(meta.get("graft.target", "null"))
    except (OSError, ValueError) as exc:
        logger.warning("%s: no graft.target to describe (%s)", weights.name, exc)
        return None
    return target if isinstance(target, dict) else None


def _pyfunc_flavor(data: str) -> dict[str, Any]:
    return {
        "loader_module": LOADER_MODULE,
        "code": "code",
        "data": data,
        "env": {"virtualenv": "python_env.yaml"},
        "python_version": platform.python_version(),
    }


def _pyfunc_files(folder: Path) -> list[tuple[str, Path]]:
    code = folder / "code"
    code.mkdir(exist_ok=True)
    loader = code / f"{LOADER_MODULE}.py"
    shutil.copyfile(mlflow_pyfunc.__file__, loader)
    requirements = folder / "requirements.txt"
    requirements.write_text(_REQUIREMENTS)
    env = folder / "python_env.yaml"
    env.write_text(
        yaml.safe_dump(
            {
                "python": platform.python_version(),
                "build_dependencies": ["pip", "setuptools", "wheel"],
                "dependencies": ["-r requirements.txt"],
            },
            sort_keys=False,
        )
    )
    return [
        (f"code/{loader.name}", loader),
        ("requirements.txt", requirements),
        ("python_env.yaml", env),
    ]


def _signature(
    target: dict[str, Any], architectures: Sequence[ArchitectureRef]
) -> dict[str, Any] | None:
    """MLflow's tensor signature, computed in a sandboxed child (``None`` when the
    architecture declares no example input, or cannot be built)."""
    payload = {
        "architecture": str(target.get("architecture")),
        "kwargs": target.get("kwargs") or {},
        "extra": [list(ref) for ref in architectures],
    }
    try:
        answer = run_sandboxed(
            "app.services.mlflow_model:signature_in_child", payload, limits=_LIMITS
        )
    except GraftError as exc:
        logger.warning("no signature for %s: %s", payload["architecture"], exc.message)
        return None
    return answer if isinstance(answer, dict) else None


_LIMITS = Limits(cpu_seconds=120, open_files=256)


def signature_in_child(
    payload: dict[str, Any], emit: Callable[[dict[str, Any]], None]
) -> dict[str, Any] | None:
    """Build the architecture on the meta device and read its example input and output
    shape (a sandbox child's function; see :func:`_signature`)."""
    del emit  # no progress to report
    bound = bind_architecture(
        payload["architecture"],
        payload["kwargs"],
        extra=[(str(n), str(m), str(f)) for n, m, f in payload["extra"]],
    )
    model = bound.build("meta")
    example = bound.example(model, batch=1)
    if example is None or not hasattr(example[0], "dtype"):
        return None
    inputs, output_shape = example
    floats = [p.dtype for p in model.parameters() if p.dtype.is_floating_point]
    output_dtype = str(floats[0] if floats else inputs.dtype).removeprefix("torch.")
    return {
        "inputs": _tensor_spec(str(inputs.dtype).removeprefix("torch."), inputs.shape),
        "outputs": _tensor_spec(output_dtype, output_shape),
        "params": None,
    }


def _tensor_spec(dtype: str, shape: Sequence[int]) -> str:
    spec = {"dtype": dtype, "shape": [-1, *shape[1:]]}
    return json.dumps([{"type": "tensor", "tensor-spec": spec}])
