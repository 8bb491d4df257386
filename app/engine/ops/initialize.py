"""Seeded initialisation of the target keys that no source tensor feeds.

``resolve_init`` turns a recipe's ``init`` rule into the concrete function and arguments for one
key from its header alone (what planning records); ``initialize`` draws the tensor. ``auto``
follows SPEC §2: by module type when the target knows it, else by key name and rank.

One truncation convention: ``trunc_normal`` is cut at mean ± 2 std unless the rule gives
absolute bounds ``a`` and ``b``, and ``auto``'s trunc_normal draws are the same (std .02, cut
at ±0.04). timm's ``trunc_normal_(std=.02)`` keeps torch's absolute ±2, no cut at that std;
Graft chose the relative cut and uses it everywhere.

Random draws depend on ``(seed, key)`` only, never on the order keys are processed: each key gets
its own CPU ``torch.Generator`` seeded from ``sha256(f"{seed}:{key}")``. Values are drawn in
float32 and then cast, so the same inputs give bit-identical tensors on the same torch build.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from app.engine._lazy import LazyModule

if TYPE_CHECKING:
    import torch
else:  # torch loads on first use: planning (resolve_init) never needs it
    torch = LazyModule("torch")

from app.engine.errors import InvalidRecipeError, InvalidTargetError
from app.engine.meta import DTYPE_SIZES, is_floating

__all__ = [
    "INIT_FNS",
    "InitArgs",
    "InitRecord",
    "initialize",
    "key_generator",
    "resolve_init",
    "sample",
]

INIT_FNS = (
    "auto",
    "zeros",
    "ones",
    "normal",
    "trunc_normal",
    "xavier_uniform",
    "kaiming_normal",
)

InitArgs = dict[str, float | str]

# Every argument a fn takes, with its default. trunc_normal's bounds default to mean ± 2 std
# (filled in by ``_complete_args``), so that ``std`` alone gives the usual 2-std cut.
_DEFAULTS: dict[str, InitArgs] = {
    "zeros": {},
    "ones": {},
    "normal": {"mean": 0.0, "std": 1.0},
    "trunc_normal": {"mean": 0.0, "std": 0.02},
    "xavier_uniform": {"gain": 1.0},
    "kaiming_normal": {"a": 0.0, "mode": "fan_out", "nonlinearity": "relu"},
}
_OPTIONAL = {"trunc_normal": ("a", "b")}
_STRING_ARGS = {"mode": ("fan_in", "fan_out")}
_NONLINEARITIES = (
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
)
_NEEDS_FANS = ("xavier_uniform", "kaiming_normal")
_STD = 0.02  # timm's and transformers' usual std for linear and embedding weights


@dataclass(frozen=True, slots=True)
class InitRecord:
    """What the report records for an initialised key.

    Attributes:
        fn: the function that ran, resolved (``kaiming_normal`` even when ``auto`` was asked).
        args: every argument the function ran with, defaults included.
        seed: the recipe seed; the key's own stream is derived from it and the key.
    """

    fn: str
    args: InitArgs
    seed: int


def key_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator whose stream depends on ``seed`` and ``key`` only.

    Args:
        seed: the recipe seed.
        key: the target key the draws are for.

    Returns:
        A freshly seeded ``torch.Generator`` (63-bit seed from ``sha256(f"{seed}:{key}")``).
    """
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:8], "big") & (2**63 - 1))
    return generator


def resolve_init(
    key: str,
    shape: Sequence[int],
    dtype: str,
    *,
    fn: str = "auto",
    args: Mapping[str, float | str] | None = None,
    module: str | None = None,
    seed: int = 0,
) -> InitRecord:
    """Resolve an init rule for one key from its header, validating it, without drawing.

    Args:
        key: the target key.
        shape: the target tensor's shape.
        dtype: the target's canonical dtype name (``float32``, ``int64`` …).
        fn: one of ``INIT_FNS``.
        args: arguments for ``fn`` (``std``, ``mean``, ``a``, ``b``, ``gain``, ``mode``,
            ``nonlinearity``); omitted ones take their defaults. ``auto`` takes none.
        module: the owning module's type (``Conv2d``) when the target knows it.
        seed: the recipe seed.

    Returns:
        The record: the resolved fn, its complete arguments and the seed.

    Raises:
        InvalidTargetError: unknown dtype or a negative dimension.
        InvalidRecipeError: unknown fn or argument, or a fn the tensor cannot take.
    """
    dims = _check_header(key, shape, dtype)
    if fn not in INIT_FNS:
        raise InvalidRecipeError(
            f"{key!r}: unknown init fn {fn!r}; use one of {', '.join(INIT_FNS)}"
        )
    if fn == "auto":
        if args:
            raise InvalidRecipeError(
                f"{key!r}: init fn 'auto' takes no args (got {sorted(args)}); "
                "name the fn to pass arguments"
            )
        fn, preset = _auto(key, dims, dtype, module)
        args = preset
    if not is_floating(dtype) and fn not in ("zeros", "ones"):
        raise InvalidRecipeError(
            f"{key!r} is {dtype}: only zeros and ones initialise a non-floating tensor, not {fn!r}"
        )
    if fn in _NEEDS_FANS and len(dims) < 2:
        raise InvalidRecipeError(
            f"{key!r}: {fn} needs a tensor of rank >= 2 to compute fans, got shape {list(dims)}; "
            "use normal or trunc_normal"
        )
    return InitRecord(fn=fn, args=_complete_args(key, fn, args or {}), seed=seed)


def sample(
    fn: str,
    args: Mapping[str, float | str],
    shape: Sequence[int],
    *,
    generator: torch.Generator,
) -> torch.Tensor:
    """Draw a float32 CPU tensor for a resolved fn (see ``resolve_init``).

    Args:
        fn: a resolved fn (anything in ``INIT_FNS`` but ``auto``).
        args: its complete arguments, as ``InitRecord.args`` holds them.
        shape: the shape to draw.
        generator: the stream to draw from.

    Returns:
        A new float32 tensor on the CPU.
    """
    dims = tuple(int(d) for d in shape)
    if fn == "ones":
        return torch.ones(dims)
    if fn == "zeros" or math.prod(dims) == 0:
        # torch warns on zero-element init and draws nothing: nothing to draw.
        return torch.zeros(dims)
    out = torch.empty(dims)
    if fn == "normal":
        return out.normal_(_num(args, "mean"), _num(args, "std"), generator=generator)
    if fn == "trunc_normal":
        return torch.nn.init.trunc_normal_(
            out,
            mean=_num(args, "mean"),
            std=_num(args, "std"),
            a=_num(args, "a"),
            b=_num(args, "b"),
            generator=generator,
        )
    if fn == "xavier_uniform":
        return torch.nn.init.xavier_uniform_(out, gain=_num(args, "gain"), generator=generator)
    if fn == "kaiming_normal":
        fan_in, fan_out = _fans(dims)
        fan = fan_out if args["mode"] == "fan_out" else fan_in
        gain = torch.nn.init.calculate_gain(cast(Any, args["nonlinearity"]), _num(args, "a"))
        return out.normal_(0.0, gain / math.sqrt(fan), generator=generator)
    raise InvalidRecipeError(f"unknown init fn {fn!r}; use one of {', '.join(INIT_FNS[1:])}")


def initialize(
    key: str,
    shape: Sequence[int],
    dtype: str,
    *,
    fn: str = "auto",
    args: Mapping[str, float | str] | None = None,
    module: str | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, InitRecord]:
    """Initialise one target key.

    Args:
        key: the target key; with ``seed`` it alone determines the random stream.
        shape: the target shape.
        dtype: the target's canonical dtype name.
        fn: one of ``INIT_FNS``; ``auto`` picks by module type, else key name and rank.
        args: arguments for ``fn``; omitted ones take their defaults.
        module: the owning module's type (``Conv2d``, ``BatchNorm2d``) when known.
        seed: the recipe seed.

    Returns:
        The new CPU tensor in ``dtype`` and the record for the report.

    Raises:
        InvalidTargetError: unknown dtype or a negative dimension.
        InvalidRecipeError: unknown fn or argument, or a fn the tensor cannot take.
    """
    record = resolve_init(key, shape, dtype, fn=fn, args=args, module=module, seed=seed)
    torch_dtype = getattr(torch, dtype)
    dims = tuple(int(d) for d in shape)
    if not is_floating(dtype):
        # Only zeros and ones get here; build them in the dtype itself (no float round trip).
        maker = torch.ones if record.fn == "ones" else torch.zeros
        return maker(dims, dtype=torch_dtype), record
    values = sample(record.fn, record.args, dims, generator=key_generator(seed, key))
    return values.to(torch_dtype), record


def _auto(key: str, dims: tuple[int, ...], dtype: str, module: str | None) -> tuple[str, InitArgs]:
    """SPEC §2's ``auto``: module type first, then key name and rank.

    Embedding weights get normal(std=.02) (transformers' ``initializer_range``; PyTorch's own
    std 1 is far off for pretrained neighbours). Without a module type: rank-1 ``weight`` /
    ``gamma`` are norm scales (ones), rank-2 weights linear (trunc_normal .02), rank >= 3 weights
    convolutions (kaiming_normal fan_out); other rank >= 2 floating tensors (``pos_embed``,
    ``cls_token``, position tables) trunc_normal .02; anything else zeros.
    """
    name = key.rsplit(".", 1)[-1]
    rank = len(dims)
    if not is_floating(dtype):
        return "zeros", {}
    if name == "running_var":
        return "ones", {}
    if name in ("running_mean", "num_batches_tracked"):
        return "zeros", {}
    if name in ("bias", "beta") or name.endswith("_bias"):
        return "zeros", {}
    weight_like = name in ("weight", "gamma") or name.endswith("_weight")
    kind = (module or "").rsplit(".", 1)[-1]
    if kind and weight_like:
        if "Norm" in kind:
            return "ones", {}
        if "Embedding" in kind:
            return "normal", {"mean": 0.0, "std": _STD}
        if "Linear" in kind:
            return "trunc_normal", {"std": _STD}
        if "Conv" in kind and rank >= 3:
            return "kaiming_normal", {}
    if weight_like:
        if rank <= 1:
            return "ones", {}
        if rank == 2:
            return "trunc_normal", {"std": _STD}
        return "kaiming_normal", {}
    if rank >= 2:
        return "trunc_normal", {"std": _STD}
    return "zeros", {}


def _complete_args(key: str, fn: str, given: Mapping[str, float | str]) -> InitArgs:
    """Validate ``given`` against ``fn``'s arguments and fill in the defaults."""
    defaults = _DEFAULTS[fn]
    allowed = (*defaults, *_OPTIONAL.get(fn, ()))
    out: InitArgs = dict(defaults)
    for name, value in given.items():
        if name not in allowed:
            takes = ", ".join(allowed) if allowed else "no arguments"
            raise InvalidRecipeError(
                f"{key!r}: init fn {fn!r} has no argument {name!r}; it takes {takes}"
            )
        if name == "nonlinearity":
            if value not in _NONLINEARITIES:
                raise InvalidRecipeError(
                    f"{key!r}: unknown nonlinearity {value!r}; use one of "
                    f"{', '.join(_NONLINEARITIES)}"
                )
            out[name] = value
        elif name in _STRING_ARGS:
            if value not in _STRING_ARGS[name]:
                raise InvalidRecipeError(
                    f"{key!r}: {name} must be one of {', '.join(_STRING_ARGS[name])}, got {value!r}"
                )
            out[name] = value
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InvalidRecipeError(f"{key!r}: {fn} argument {name!r} must be a number")
            out[name] = float(value)
    for name in ("std", "gain"):
        if name in out and not _num(out, name) >= 0:
            raise InvalidRecipeError(f"{key!r}: {fn} argument {name!r} must be >= 0")
    if fn == "trunc_normal":
        mean, std = _num(out, "mean"), _num(out, "std")
        out.setdefault("a", mean - 2 * std)
        out.setdefault("b", mean + 2 * std)
        if not _num(out, "a") < _num(out, "b"):
            raise InvalidRecipeError(
                f"{key!r}: trunc_normal needs a < b, got a={out['a']}, b={out['b']}"
            )
    return out


def _check_header(key: str, shape: Sequence[int], dtype: str) -> tuple[int, ...]:
    if dtype not in DTYPE_SIZES:
        raise InvalidTargetError(
            f"{key!r}: unknown dtype {dtype!r}; use one of {', '.join(DTYPE_SIZES)}"
        )
    dims = tuple(int(d) for d in shape)
    if any(d < 0 for d in dims):
        raise InvalidTargetError(f"{key!r}: negative dimension in shape {list(dims)}")
    return dims


def _fans(dims: tuple[int, ...]) -> tuple[int, int]:
    """Fan in and out as torch computes them: dims 1 and 0 times the receptive field."""
    receptive = math.prod(dims[2:])
    return dims[1] * receptive, dims[0] * receptive


def _num(args: Mapping[str, float | str], name: str) -> float:
    value = args[name]
    if isinstance(value, str):
        raise InvalidRecipeError(f"init argument {name!r} must be a number, got {value!r}")
    return float(value)
