"""What a parity check runs (SPEC §3.2): the two models and the inputs they are fed, as data.

A :class:`ParitySpec` travels with the conversion's options (it is plain JSON, so it crosses
into a sandbox child as it is). The reference (the *source* model) is ``arch:NAME``, a
registered architecture, or ``MODULE:FACTORY``, an import, allowed only when the caller says
so (the CLI, on the user's own machine; never the service). The target model is the
architecture target's own, or ``target_module`` for skeleton and template targets.

Inputs are given (``[{"shape": [2, 3, 224, 224]}]``, ``[{"shape": [2, 16], "dtype":
"int64", "high": 30522}]``) or derived: the reference's declared ``example_input``, else its
first layer (token ids for an embedding, images for a conv stem, vectors for a linear).
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from app.engine.errors import InvalidTargetError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "DEFAULT_BATCH",
    "InputSpec",
    "ParitySpec",
    "build_model",
    "derive_inputs",
    "make_inputs",
    "resolve_inputs",
]

DEFAULT_BATCH = 2
DEFAULT_LENGTH = 16  # tokens, for an embedding stem
DEFAULT_IMAGE = 224  # pixels per side, for a conv stem
DEFAULT_SIGNAL = 64  # samples, for a 1-D conv stem


class InputSpec(BaseModel):
    """One positional input: its shape, dtype and, for integers, the range ``[low, high)``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    shape: list[int] = Field(min_length=1)
    dtype: Literal["float32", "float16", "bfloat16", "float64", "int64", "int32"] = "float32"
    low: int = 0
    high: int | None = None


class ParitySpec(BaseModel):
    """How to run parity for one conversion.

    Attributes:
        reference: the source model: ``arch:NAME`` or ``MODULE:FACTORY``.
        reference_kwargs: keyword arguments for it.
        target_module: the target model for skeleton and template targets
            (``arch:NAME`` or ``MODULE:FACTORY``); ``None`` uses the architecture target's.
        target_module_kwargs: keyword arguments for it.
        inputs: the positional inputs both models get; ``None`` derives them.
        allow_imports: whether ``MODULE:FACTORY`` may be imported (the CLI: yes; the service:
            never).
        architectures: more registered architectures, (name, module, factory) triples (the
            engine reads no settings).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    reference: str = Field(min_length=1)
    reference_kwargs: dict[str, Any] = {}
    target_module: str | None = None
    target_module_kwargs: dict[str, Any] = {}
    inputs: list[InputSpec] | None = None
    allow_imports: bool = False
    architectures: tuple[tuple[str, str, str], ...] = ()


@contextmanager
def _no_init() -> Iterator[None]:
    """Skip ``torch.nn.init``'s random fills while a model is built: every tensor is then
    loaded (strictly, or checked for gaps), so drawing billions of numbers first is waste."""
    from torch.nn import init

    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(init, n) for n in names}
    try:
        for name in names:
            setattr(init, name, lambda tensor, *_, **__: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def build_model(
    ref: str,
    kwargs: dict[str, Any],
    *,
    device: str,
    architectures: Sequence[tuple[str, str, str]],
    allow_imports: bool,
) -> nn.Module:
    """Build ``arch:NAME`` or ``MODULE:FACTORY`` on ``device``, in eval mode, without the
    random initialisation of its tensors (the caller loads every one of them).

    Args:
        ref: what to build.
        kwargs: its keyword arguments.
        device: where its tensors live.
        architectures: more architectures, (name, module, factory) triples.
        allow_imports: whether ``MODULE:FACTORY`` may be imported.

    Returns:
        The model, with its own initial weights.

    Raises:
        InvalidTargetError: an unknown name, an import that is not allowed or fails, a
            factory that refuses its kwargs or returns no module.
    """
    import torch
    from torch import nn

    from app.engine.architectures import bind_architecture

    if ref.startswith("arch:"):
        bound = bind_architecture(ref.removeprefix("arch:"), kwargs, extra=architectures)
        with _no_init():
            return bound.build(device).eval()
    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise InvalidTargetError(f"{ref!r}: write arch:NAME or MODULE:FACTORY")
    if not allow_imports:
        raise InvalidTargetError(
            f"{ref!r}: only registered architectures (arch:NAME) can be built here"
        )
    try:
        factory = getattr(importlib.import_module(module_name), attr)
        with torch.device(device), _no_init():
            model = factory(**kwargs)
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise InvalidTargetError(f"cannot build {ref}: {type(exc).__name__}: {exc}") from None
    if not isinstance(model, nn.Module):
        raise InvalidTargetError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model.eval()


def make_inputs(specs: list[InputSpec], *, seed: int, device: str) -> list[torch.Tensor]:
    """Seeded tensors for ``specs``: N(0, 1) for floats, uniform in ``[low, high)`` for ints.

    Raises:
        InvalidTargetError: an integer input without ``high``.
    """
    import torch

    gen = torch.Generator().manual_seed(seed)
    tensors = []
    for i, spec in enumerate(specs):
        dtype = getattr(torch, spec.dtype)
        if dtype.is_floating_point:
            tensors.append(torch.randn(spec.shape, generator=gen).to(dtype))
            continue
        if spec.high is None or spec.high <= spec.low:
            raise InvalidTargetError(f"parity input {i}: an integer input needs high > low")
        tensors.append(torch.randint(spec.low, spec.high, spec.shape, generator=gen, dtype=dtype))
    return [t.to(device) for t in tensors]


def resolve_inputs(
    model: nn.Module, specs: list[InputSpec] | None, *, seed: int, device: str
) -> tuple[list[torch.Tensor], list[dict[str, Any]]]:
    """The positional inputs both models get, and how the report describes them.

    Given ``specs`` win; else the model's own ``example_input(batch)`` (a zoo architecture
    sizes it to its config); else its first layer decides (:func:`derive_inputs`).

    Raises:
        InvalidTargetError: nothing says what the model takes (pass ``inputs``).
    """
    import torch

    if specs is None:
        example = getattr(model, "example_input", None)
        value = example(DEFAULT_BATCH) if callable(example) else None
        if isinstance(value, torch.Tensor):
            described = {
                "shape": list(value.shape),
                "dtype": _dtype(value),
                "from": "example_input",
            }
            return [value.to(device)], [described]
        specs = derive_inputs(model)
        if specs is None:
            raise InvalidTargetError(
                "parity: cannot tell what the reference model takes from its first layer; "
                'give --inputs, e.g. [{"shape": [2, 3, 224, 224]}]'
            )
    tensors = make_inputs(specs, seed=seed, device=device)
    return tensors, [s.model_dump(exclude_none=True) for s in specs]


def derive_inputs(model: nn.Module) -> list[InputSpec] | None:
    """Inputs for ``model`` from its first layer holding parameters: token ids for an
    embedding, images for a conv stem, vectors for a linear; ``None`` for anything else."""
    from torch import nn

    for module in model.modules():
        if next(module.parameters(recurse=False), None) is None:
            continue
        if isinstance(module, nn.Embedding):
            return [InputSpec(shape=[DEFAULT_BATCH, DEFAULT_LENGTH], dtype="int64",
                              high=module.num_embeddings)]  # fmt: skip
        if isinstance(module, nn.Conv2d):
            side = DEFAULT_IMAGE
            return [InputSpec(shape=[DEFAULT_BATCH, module.in_channels, side, side])]
        if isinstance(module, nn.Conv1d):
            return [InputSpec(shape=[DEFAULT_BATCH, module.in_channels, DEFAULT_SIGNAL])]
        if isinstance(module, nn.Linear):
            return [InputSpec(shape=[DEFAULT_BATCH, module.in_features])]
        return None
    return None


def _dtype(value: torch.Tensor) -> str:
    return str(value.dtype).removeprefix("torch.")
