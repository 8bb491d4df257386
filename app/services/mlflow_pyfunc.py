"""MLflow's ``python_function`` loader for a version Graft registered (shipped with it).

This file travels with every registered version as ``code/graft_pyfunc.py``; its ``MLmodel``
names it as the ``loader_module``, so ``mlflow.pyfunc.load_model("models:/NAME@ALIAS")``
calls :func:`_load_pyfunc` with the path of ``model.safetensors``. It loads no pickle, ever:

1. the target the weights were converted for is read from the safetensors header
   (``graft.target``: a registered architecture's name and kwargs, written by Graft);
2. that architecture is built by Graft's own registry (so the consumer's environment needs
   Graft, ``torch`` and ``safetensors``; ``requirements.txt`` says so), or by a plug-in
   named in ``GRAFT_ARCHITECTURES`` there;
3. the safetensors weights are loaded into it (``strict``: every key is used and every
   parameter filled; a tied parameter stored once is filled through its twin);
4. ``predict(array)`` runs the model's forward pass under ``torch.inference_mode`` on the CPU
   and answers a numpy array.

Everything is imported lazily: the module itself needs only the standard library.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["GraftPyfunc", "load_weights", "read_target"]


def read_target(weights: Path) -> dict[str, Any]:
    """The ``graft.target`` of a Graft safetensors output: ``{"kind": "architecture",
    "architecture": NAME, "kwargs": {...}}``.

    Raises:
        ValueError: the file carries no architecture target (a template or skeleton target,
            or a file Graft did not write).
    """
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        meta = f.metadata() or {}
    target = json.loads(meta["graft.target"]) if "graft.target" in meta else None
    if not isinstance(target, dict) or target.get("kind") != "architecture":
        raise ValueError(
            f"{weights.name} was not converted into a registered architecture "
            "(its graft.target metadata names none), so there is no model to build"
        )
    return target


def load_weights(model: Any, state: dict[str, Any]) -> None:
    """Load ``state`` into ``model`` strictly, allowing only tied parameters stored once.

    Raises:
        ValueError: a key the model lacks, or a parameter nothing fills.
    """
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"the weights hold keys the model lacks: {result.unexpected_keys[:5]}")
    # A parameter shared by two names (tied) is filled when either name was loaded.
    by_tensor: dict[int, set[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        by_tensor.setdefault(id(tensor), set()).add(key)
    unfilled = [
        key
        for key in result.missing_keys
        if not any(k in state for group in by_tensor.values() if key in group for k in group)
    ]
    if unfilled:
        raise ValueError(f"the weights leave parameters unfilled: {unfilled[:5]}")


class GraftPyfunc:
    """The loaded model, as MLflow's ``PyFuncModel`` calls it.

    Args:
        model: the architecture with its weights, in eval mode.
    """

    def __init__(self, model: Any) -> None:
        self.model = model

    @classmethod
    def load(cls, weights: Path) -> GraftPyfunc:
        """Build the registered architecture and load ``weights`` into it.

        Raises:
            ImportError: Graft is not installed in this environment.
            ValueError: the weights name no architecture, or do not fit it.
        """
        from safetensors.torch import load_file

        target = read_target(weights)
        try:
            from app.engine.architectures import bind_architecture, parse_architectures
        except ImportError as exc:
            raise ImportError(
                "this model was converted by Graft: loading it builds Graft's registered "
                f"architecture {target['architecture']!r}, so install Graft (and torch) in this "
                "environment, see requirements.txt"
            ) from exc
        extra = parse_architectures(os.environ.get("GRAFT_ARCHITECTURES"))
        bound = bind_architecture(target["architecture"], target.get("kwargs") or {}, extra=extra)
        model = bound.build("cpu")
        load_weights(model, load_file(str(weights), device="cpu"))
        model.eval()
        return cls(model)

    def predict(self, model_input: Any, params: dict[str, Any] | None = None) -> Any:
        """The forward pass: a numpy array (or a one-entry dict, or a DataFrame holding one
        tensor) in, the output as numpy (a tuple or dict of outputs, each as numpy)."""
        import numpy as np
        import torch

        if isinstance(model_input, dict) and len(model_input) == 1:
            model_input = next(iter(model_input.values()))
        if hasattr(model_input, "to_numpy"):
            model_input = model_input.to_numpy()
        x = torch.from_numpy(np.ascontiguousarray(model_input))
        with torch.inference_mode():
            out = self.model(x)
        return _as_numpy(out)


def _as_numpy(out: Any) -> Any:
    if hasattr(out, "detach"):
        return out.detach().cpu().numpy()
    if isinstance(out, dict):
        return {k: _as_numpy(v) for k, v in out.items()}
    if isinstance(out, (tuple, list)):
        return type(out)(_as_numpy(v) for v in out)
    return out


def _load_pyfunc(path: str) -> GraftPyfunc:
    """MLflow's entry point: ``path`` is the ``data`` the ``MLmodel`` names (the weights)."""
    return GraftPyfunc.load(Path(path))
