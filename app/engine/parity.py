"""Parity (SPEC §3.2): run the source model and the converted model side by side, module by
module, and name the first one whose output diverges.

Modules are paired through the conversion itself. Every tensor of the reference model (its
own ``state_dict``, tied aliases included) is mapped to the target keys it feeds: through the
plan (which source keys fed which target key), else through the recipe's renames (a tied
alias the checkpoint never stored). A target module pairs with the source module that holds
exactly the tensors feeding it, no more and no fewer: a leaf (``wq`` -> ``q_proj``), a block,
or the whole model. Merged and split tensors pair only at the enclosing module.

Forward hooks record each paired module's first input and first output tensor on both
sides; both models get the same seeded inputs. A module *diverges* when its outputs are not
allclose; it is where a conversion went wrong when its inputs agreed. Such a module is
*absorbed* when a paired ancestor's outputs agree again: a value-preserving permutation (the
rotary reordering of q/k rows) changes ``q_proj``'s output, not the attention's. The first
divergence that nothing absorbs, in execution order, fails parity and is named.

Modules whose shapes the recipe adapted (a new head, a new stem) cannot agree: they are not
compared, and the report says which and why.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.engine.plan import Plan, PlanEntry
from app.engine.recipe import RenameRule
from app.engine.recipe.rename import apply_renames

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "PARITY_ATOL",
    "PARITY_RTOL",
    "ModulePair",
    "ParityResult",
    "pair_modules",
    "run_parity",
]

PARITY_ATOL = 1e-5
PARITY_RTOL = 1e-4


@dataclass(frozen=True)
class ModulePair:
    """A target module and the source module that computes the same thing.

    Attributes:
        target: the target module's path (``""``: the whole model).
        source: the source module's path.
        skip: why its outputs need not agree (a shape the recipe adapted), or ``None``.
    """

    target: str
    source: str
    skip: str | None = None


@dataclass
class ParityResult:
    """What parity found; :meth:`section` is ``verification.parity``.

    Attributes:
        equal: no divergence was left unabsorbed.
        compared: the target modules compared, in execution order.
        skipped: ``{"target_module", "reason"}`` for modules holding tensors not compared.
        first_divergence: ``{"source_module", "target_module", "max_abs_diff"}`` or ``None``.
        max_abs_diff: the largest difference over the compared modules not absorbed.
        absorbed: modules that diverged inside an ancestor that agrees again.
        permuted: modules whose outputs are the source's reordered along the features (a
            permutation the recipe applied); what follows them says whether it was right.
    """

    equal: bool
    compared: list[str]
    skipped: list[dict[str, str]]
    first_divergence: dict[str, Any] | None
    max_abs_diff: float
    absorbed: list[str] = field(default_factory=list)
    permuted: list[str] = field(default_factory=list)

    def section(self, *, atol: float, rtol: float, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "equal": self.equal,
            "max_abs_diff": self.max_abs_diff,
            "atol": atol,
            "rtol": rtol,
            "inputs": inputs,
            "modules_compared": len(self.compared),
            "first_divergence": self.first_divergence,
            "skipped": self.skipped,
            "absorbed": self.absorbed,
            "permuted": self.permuted,
        }


# Pairing ------------------------------------------------------------------------------------


def _owner(key: str) -> str:
    return key.rpartition(".")[0]


def _under(key: str, module: str) -> bool:
    return not module or key.startswith(module + ".")


def _common_module(keys: Iterable[str]) -> str:
    parts: list[str] | None = None
    for key in keys:
        segs = _owner(key).split(".") if _owner(key) else []
        if parts is None:
            parts = segs
            continue
        n = 0
        while n < min(len(parts), len(segs)) and parts[n] == segs[n]:
            n += 1
        parts = parts[:n]
    return ".".join(parts or [])


def _edges(
    source_keys: Sequence[str], target_keys: set[str], plan: Plan, renames: Sequence[RenameRule]
) -> dict[str, list[str]]:
    """Source-model key -> the target keys it feeds.

    The plan says what each checkpoint key fed; where it fed several (a ``copy``), the one
    its renames lead to is its own (the others are ties, paired through their own alias).
    Keys the plan never saw (a tied alias the checkpoint did not store) go where the renames
    lead, when that is a target key.
    """
    fed: dict[str, list[str]] = {}
    for entry in plan.entries:
        for source in entry.sources:
            fed.setdefault(source, []).append(entry.target)
    edges: dict[str, list[str]] = {}
    for key in source_keys:
        renamed = apply_renames([key], renames)[key].key
        targets = fed.get(key, [])
        if renamed in targets or (not targets and renamed in target_keys):
            targets = [renamed]
        edges[key] = targets
    return edges


def pair_modules(
    source_model: nn.Module,
    target_model: nn.Module,
    plan: Plan,
    renames: Sequence[RenameRule],
) -> tuple[list[ModulePair], list[dict[str, str]]]:
    """Pair every target module with the source module holding exactly what feeds it.

    Args:
        source_model: the reference model (the source's architecture).
        target_model: the target's model.
        plan: the conversion's plan.
        renames: the recipe's ``rename`` rules.

    Returns:
        The pairs, in the target's module order, and the target modules holding tensors
        that did not pair (``{"target_module", "reason"}``).
    """
    source_keys = list(source_model.state_dict().keys())
    target_keys = list(target_model.state_dict().keys())
    edges = _edges(source_keys, set(target_keys), plan, renames)
    feeders: dict[str, list[str]] = {}
    for source, targets in edges.items():
        for target in targets:
            feeders.setdefault(target, []).append(source)
    source_chains = _chains(source_model, source_keys)
    target_chains = _chains(target_model, target_keys)
    entries = {e.target: e for e in plan.entries}
    shapes = {k: tuple(v.shape) for k, v in source_model.state_dict().items()}
    pairs: list[ModulePair] = []
    unpaired: list[dict[str, str]] = []
    for name, module in target_model.named_modules():
        keys = [k for k in target_keys if _under(k, name)]
        if not keys:
            continue
        found = _why_unpaired(name, keys, feeders, edges, source_keys, source_chains)
        if isinstance(found, str):
            if next(module.parameters(recurse=False), None) is not None:
                unpaired.append({"target_module": name, "reason": found})
            continue
        # Modules holding the same tensors (a block and the Sequential inside it) pair
        # in order, outermost first.
        chain, mine = found[0], target_chains[frozenset(keys)]
        source = chain[min(mine.index(name), len(chain) - 1)]
        pairs.append(ModulePair(name, source, _adapted(keys, entries, feeders, shapes)))
    return pairs, unpaired


def _chains(model: nn.Module, keys: Sequence[str]) -> dict[frozenset[str], list[str]]:
    """The model's modules grouped by the tensors they hold, outermost first."""
    chains: dict[frozenset[str], list[str]] = {}
    for name, _ in model.named_modules():
        held = frozenset(k for k in keys if _under(k, name))
        if held:
            chains.setdefault(held, []).append(name)
    return chains


def _why_unpaired(
    name: str,
    keys: list[str],
    feeders: Mapping[str, list[str]],
    edges: Mapping[str, list[str]],
    source_keys: Sequence[str],
    source_chains: Mapping[frozenset[str], list[str]],
) -> str | tuple[list[str]]:
    """The source modules holding exactly what feeds ``keys`` (outermost first, as a
    1-tuple), or why there are none."""
    orphan = next((k for k in keys if not feeders.get(k)), None)
    if orphan is not None:
        return f"{orphan} has no counterpart in the source model"
    sources = frozenset(s for k in keys for s in feeders[k])
    chain = source_chains.get(sources)
    if chain is None:
        return f"no source module holds exactly its sources ({', '.join(sorted(sources)[:3])})"
    for key in sources:
        if not all(_under(t, name) for t in edges[key]):
            return f"its source {key} also feeds outside it"
    return (chain,)


def _adapted(
    keys: list[str],
    entries: Mapping[str, PlanEntry],
    feeders: Mapping[str, list[str]],
    shapes: Mapping[str, tuple[int, ...]],
) -> str | None:
    """Why a paired module's output cannot equal its source's: a shape the recipe changed."""
    for key in keys:
        entry = entries.get(key)
        if entry is not None and entry.status == "adapted":
            return f"{key} was adapted ({', '.join(entry.ops)})"
        sources = feeders.get(key, [])
        if entry is None or len(sources) != 1 or entry.part is not None:
            continue
        if shapes.get(sources[0]) not in (None, entry.shape) and entry.merge_dim is None:
            return f"{key} has shape {list(entry.shape)}, its source {list(shapes[sources[0]])}"
    return None


# Running and comparing ----------------------------------------------------------------------


@dataclass
class _Record:
    order: list[str] = field(default_factory=list)
    inputs: dict[str, torch.Tensor | None] = field(default_factory=dict)
    outputs: dict[str, torch.Tensor | None] = field(default_factory=dict)


def _first_tensor(value: Any) -> torch.Tensor | None:
    """The primary tensor of a module's input or output: itself, or the first one found in
    a tuple, list or mapping (``ModelOutput`` included)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        value = list(value.values())
    if isinstance(value, tuple | list):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def _record(model: nn.Module, names: Iterable[str], inputs: list[torch.Tensor]) -> _Record:
    """Run ``model`` on ``inputs`` with a hook on each named module: its first call's input
    and output tensors, as float32, in the order the modules finished."""
    import torch

    record = _Record()
    modules = dict(model.named_modules())
    handles = []

    def hook(name: str) -> Any:
        def on_forward(_: Any, args: Any, kwargs: Any, output: Any) -> None:
            if name in record.outputs:
                return
            given = (
                _first_tensor(args) if _first_tensor(args) is not None else _first_tensor(kwargs)
            )
            out = _first_tensor(output)
            record.order.append(name)
            record.inputs[name] = given.detach().float() if given is not None else None
            record.outputs[name] = out.detach().float() if out is not None else None

        return on_forward

    for name in dict.fromkeys(names):
        handles.append(modules[name].register_forward_hook(hook(name), with_kwargs=True))
    try:
        with torch.inference_mode():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return record


def _diff(a: torch.Tensor | None, b: torch.Tensor | None, atol: float, rtol: float) -> float | None:
    """``None`` when ``a`` and ``b`` agree (allclose), else their max |difference| (inf for
    different shapes or a missing tensor)."""
    import torch

    if a is None or b is None:
        return None if a is None and b is None else float("inf")
    if a.shape != b.shape:
        return float("inf")
    if torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True):
        return None
    return float((a - b).abs().max().item())


def _permuted(a: torch.Tensor | None, b: torch.Tensor | None, atol: float, rtol: float) -> bool:
    """Whether ``b`` holds ``a``'s values reordered along the feature (last) dim: what a
    value-preserving permutation of a weight's rows (the rotary reordering of q/k) does to
    a module's output. Later modules then show whether the reordering was right."""
    import torch

    if a is None or b is None or a.shape != b.shape or a.dim() == 0:
        return False
    return torch.allclose(a.sort(dim=-1).values, b.sort(dim=-1).values, atol=atol, rtol=rtol)


def _not_run_by_target(
    compared: Sequence[Any], src: dict[str, Any], tgt: dict[str, Any]
) -> list[dict[str, str]]:
    """The paired modules the source model ran and the target model did not."""
    return [
        {
            "target_module": p.target,
            "reason": f"the target model did not run it ({p.source or 'the source model'} ran)",
        }
        for p in compared
        if p.target not in tgt and p.source in src
    ]


def run_parity(
    source_model: nn.Module,
    target_model: nn.Module,
    plan: Plan,
    renames: Sequence[RenameRule],
    inputs: list[torch.Tensor],
    *,
    atol: float = PARITY_ATOL,
    rtol: float = PARITY_RTOL,
) -> ParityResult:
    """Pair the modules, run both models on ``inputs``, and find the first divergence.

    Args:
        source_model: the reference model, holding the source's weights, in eval mode.
        target_model: the target model, holding the converted weights, in eval mode.
        plan: the conversion's plan.
        renames: the recipe's ``rename`` rules.
        inputs: the positional inputs both models get.
        atol: absolute tolerance (float32).
        rtol: relative tolerance.

    Returns:
        The outcome; a divergence is a result, not an exception.
    """
    pairs, unpaired = pair_modules(source_model, target_model, plan, renames)
    skipped = unpaired + [{"target_module": p.target, "reason": p.skip} for p in pairs if p.skip]
    compared = [p for p in pairs if p.skip is None]
    src = _record(source_model, (p.source for p in compared), inputs)
    tgt = _record(target_model, (p.target for p in compared), inputs)
    by_target = {p.target: p for p in compared}
    skipped += _not_run_by_target(compared, src.outputs, tgt.outputs)
    diverged: dict[str, float] = {}
    origins: list[str] = []
    ran: list[str] = []
    permuted: list[str] = []
    for name in tgt.order:
        pair = by_target[name]
        if pair.source not in src.outputs:
            skipped.append(
                {"target_module": name, "reason": f"the source's {pair.source} did not run"}
            )
            continue
        ran.append(name)
        diff = _diff(src.outputs[pair.source], tgt.outputs[name], atol, rtol)
        if diff is None:
            continue
        if _permuted(src.outputs[pair.source], tgt.outputs[name], atol, rtol):
            permuted.append(name)
            continue
        diverged[name] = diff
        if _diff(src.inputs[pair.source], tgt.inputs[name], atol, rtol) is None:
            origins.append(name)
    agreeing = [n for n in ran if n not in diverged]
    absorbed = [o for o in origins if any(a != o and _under(o, a) for a in agreeing)]
    failing = [o for o in origins if o not in absorbed]
    if not failing and not any(p.skip for p in pairs):
        # Diverged with no origin among the paired modules: it began in one that did not
        # pair (a fused tensor's leaf); the first such divergence is the best name there is.
        failing = [n for n in diverged if not any(a != n and _under(n, a) for a in agreeing)][:1]
    first = None
    if failing:
        name = failing[0]
        first = {"source_module": by_target[name].source, "target_module": name,
                 "max_abs_diff": diverged[name]}  # fmt: skip
    return ParityResult(
        equal=not failing,
        compared=ran,
        skipped=skipped,
        first_divergence=first,
        # The outermost compared module finishes last: its difference is the output's.
        max_abs_diff=diverged.get(ran[-1], 0.0) if ran else 0.0,
        absorbed=absorbed,
        permuted=permuted,
    )


def timed_parity(*args: Any, **kwargs: Any) -> tuple[ParityResult, float]:
    """:func:`run_parity`, and the seconds it took."""
    started = time.perf_counter()
    result = run_parity(*args, **kwargs)
    return result, round(time.perf_counter() - started, 3)
