"""Parity as a step of a conversion: build both models, load both sides' weights, feed both
the same inputs, compare (:mod:`app.engine.parity`), and say what the recipe's policy makes of
it (``parity: error`` refuses the conversion, ``parity: warn`` only reports)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.engine.errors import InvalidTargetError
from app.engine.parity import timed_parity
from app.engine.parity_models import ParitySpec, build_model, resolve_inputs
from app.engine.plan import Plan
from app.engine.readers import Source, open_source
from app.engine.recipe import Recipe
from app.engine.target import Target

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["ParityCheck", "check_parity", "load_reference"]

logger = logging.getLogger(__name__)


@dataclass
class ParityCheck:
    """``verification.parity``, and what the recipe's policy makes of it.

    Attributes:
        section: the report's ``verification.parity``.
        failures: the conversion's refusals (empty with ``parity: warn``).
        warnings: the divergence, when ``parity: warn`` let it through.
    """

    section: dict[str, Any]
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_parity(
    spec: ParitySpec,
    *,
    output: Path,
    plan: Plan,
    source: Source,
    target: Target,
    recipe: Recipe,
    device: str = "cpu",
) -> ParityCheck:
    """Run the reference on the source's weights and the target model on the output.

    Args:
        spec: the models and inputs.
        output: the written weights (a file, or a folder of shards).
        plan: the conversion's plan (it pairs the modules).
        source: the opened source (its weights go into the reference).
        target: the target (its architecture is the target model unless
            ``spec.target_module`` names one).
        recipe: the recipe (renames, seed, tolerances, policy).
        device: where both models run.

    Returns:
        The report section and the policy's verdict.

    Raises:
        InvalidTargetError: a model that cannot be built, or weights it does not take.
    """
    import torch

    reference = load_reference(spec, source, device)
    model = _target_model(spec, target, device)
    _load_strict(model, _read_all(output, device), what="the converted weights")
    torch.manual_seed(recipe.seed)
    inputs, described = resolve_inputs(reference, spec.inputs, seed=recipe.seed, device=device)
    result, seconds = timed_parity(
        reference, model, plan, recipe.rename, inputs, atol=recipe.parity_atol,
        rtol=recipe.parity_rtol,
    )  # fmt: skip
    section = result.section(atol=recipe.parity_atol, rtol=recipe.parity_rtol, inputs=described)
    section |= {"reference": spec.reference, "policy": recipe.parity, "seconds": seconds}
    check = ParityCheck(section)
    first = result.first_divergence
    if first is not None:
        message = (
            f"parity: {first['target_module'] or '(the whole model)'} diverges from the "
            f"source's {first['source_module'] or '(the whole model)'} "
            f"(max |diff| {first['max_abs_diff']:.3g} > atol {recipe.parity_atol} + "
            f"rtol {recipe.parity_rtol})"
        )
        (check.warnings if recipe.parity == "warn" else check.failures).append(message)
    return check


def load_reference(spec: ParitySpec, source: Source, device: str) -> nn.Module:
    """The reference model holding the source's weights, in float32 and eval mode.

    Every tensor the model holds must come from the source, except tied aliases (a head
    sharing the embedding's tensor, which checkpoints store once).

    Raises:
        InvalidTargetError: the source lacks one of the model's tensors, or does not fit it.
    """
    model = build_model(
        spec.reference, spec.reference_kwargs, device=device,
        architectures=spec.architectures, allow_imports=spec.allow_imports,
    )  # fmt: skip
    own = model.state_dict(keep_vars=True)
    wanted = {k: source.read(k).to(device) for k in source.tensors if k in own}
    try:
        missing, _ = model.load_state_dict(wanted, strict=False, assign=True)
    except RuntimeError as exc:
        raise InvalidTargetError(
            f"the source's weights do not fit the reference {spec.reference}: "
            f"{str(exc).strip().splitlines()[-1][:300]}"
        ) from None
    # assign=True keeps ties only where the model re-ties them; a tied alias the source
    # never stored is filled from the tensor it shares (found by identity before loading).
    shared = {id(v): k for k, v in own.items() if k in wanted}
    untied = [k for k in missing if id(own[k]) not in shared]
    if not untied:
        _retie(model, {k: shared[id(own[k])] for k in missing})
    if untied:
        raise InvalidTargetError(
            f"the reference {spec.reference} holds tensors the source lacks: {untied[:5]}; "
            "check --reference and its kwargs"
        )
    return model.float().eval()


def _retie(model: nn.Module, aliases: dict[str, str]) -> None:
    """Point each alias (``output.weight``) at the tensor now held under its twin's name."""
    for alias, twin in aliases.items():
        owner, _, leaf = alias.rpartition(".")
        twin_owner, _, twin_leaf = twin.rpartition(".")
        value = getattr(model.get_submodule(twin_owner), twin_leaf)
        setattr(model.get_submodule(owner), leaf, value)


def _target_model(spec: ParitySpec, target: Target, device: str) -> nn.Module:
    if spec.target_module is not None:
        return build_model(
            spec.target_module, spec.target_module_kwargs, device=device,
            architectures=spec.architectures, allow_imports=spec.allow_imports,
        )  # fmt: skip
    if target.architecture is None:
        raise InvalidTargetError(
            f"parity needs the target's model: {target.kind} targets need --target-module"
        )
    return target.architecture.build(device).eval()


def _read_all(path: Path, device: str) -> dict[str, torch.Tensor]:
    with open_source(path, strip_prefixes="none") as written:
        return {k: written.read(k).to(device) for k in written.tensors}


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], *, what: str) -> None:
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise InvalidTargetError(
            f"{what} do not load into the target model: {str(exc).strip().splitlines()[-1][:300]}"
        ) from None
    model.float().eval()
