"""Helpers for the receiving side: apply a conversion's manifest to the model you train.

A conversion's manifest (``graft.manifest/v1``) lists what loading alone does not do: the
parameters to keep frozen, and the BatchNorm layers to keep in eval mode::

    model.load_state_dict(load_file("out.safetensors"), strict=True)
    apply_manifest(model, json.loads(Path("out.manifest.json").read_text()))
    model.train()  # the listed BatchNorm layers stay in eval mode

Eval mode survives ``model.train()`` the way MMCV's ``norm_eval`` and Detectron2's frozen
backbones behave: each listed layer gets an instance-level ``train`` that keeps it in eval
mode whatever mode is asked, so ``bn.training`` is ``False`` before, during and after
``model.train()``, its running statistics never update, and its module type and state dict
are unchanged (it still loads, saves, pickles and deep-copies like before). Freezing is
``requires_grad = False``; build the optimizer from the parameters that still require grad.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from app.engine.errors import InvalidTargetError
from app.engine.report import MANIFEST_SCHEMA

__all__ = ["MANIFEST_SCHEMA", "apply_manifest", "keeps_eval"]


class _StayInEval:
    """An instance-level ``train``: whatever mode is asked, the layer stays in eval mode.

    A module-level class (not a closure or bound method), so a model carrying it still
    pickles and deep-copies.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def _is_batchnorm(module: nn.Module) -> bool:
    # By base class, and by name for third-party layers (FrozenBatchNorm2d, BatchNormAct2d).
    return (
        isinstance(module, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(module).__name__
    )


def keeps_eval(module: nn.Module) -> bool:
    """Whether ``apply_manifest`` pinned ``module`` in eval mode."""
    return isinstance(module.__dict__.get("train"), _StayInEval)


def apply_manifest(model: nn.Module, manifest: Mapping[str, Any]) -> nn.Module:
    """Freeze the manifest's parameters and pin its BatchNorm layers in eval mode.

    Args:
        model: the target model, weights already loaded.
        manifest: the conversion's manifest (``{"schema": "graft.manifest/v1", "frozen":
            [keys], "bn_eval": [module paths]}``).

    Returns:
        ``model`` itself.

    Raises:
        InvalidTargetError: the manifest is not a ``graft.manifest/v1``, or names a key or
            module the model does not have, or a ``bn_eval`` module that is not a BatchNorm.
            Nothing is changed in that case.
    """
    if manifest.get("schema") != MANIFEST_SCHEMA:
        raise InvalidTargetError(f'a manifest needs "schema": "{MANIFEST_SCHEMA}"')
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    frozen = list(manifest.get("frozen", []))
    unknown = [k for k in frozen if k not in params and k not in buffers]
    if unknown:
        raise InvalidTargetError(
            f"manifest freezes {unknown[:5]}, which the model does not have; apply it to the "
            "model the conversion targeted"
        )
    modules = dict(model.named_modules(remove_duplicate=False))
    bn_eval = list(manifest.get("bn_eval", []))
    for path in bn_eval:
        module = modules.get(path)
        if module is None:
            raise InvalidTargetError(f"manifest lists BatchNorm {path!r}, not in the model")
        if not _is_batchnorm(module):
            raise InvalidTargetError(
                f"manifest lists {path!r} for eval mode, but it is a {type(module).__name__}, "
                "not a BatchNorm"
            )
    for key in frozen:
        if key in params:  # buffers never receive gradients: nothing to do for them
            params[key].requires_grad_(False)
    for path in bn_eval:
        module = modules[path]
        module.train = _StayInEval(module)
        module.eval()
    return model
