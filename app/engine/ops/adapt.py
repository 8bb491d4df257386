"""Shape adaptations: the pure ``Tensor -> Tensor`` ops that the recipe's ``adapt`` rules name.

Every op returns the new tensor and a short description that the report quotes verbatim, e.g.
``channels(3->4, fill=repeat)``. When nothing has to change the op returns the very same tensor
object and ``None`` for the description, so callers record an op only when one ran.

Ops compute in float32 (float64 stays float64), return the input's dtype, never return a view of
their input, and raise ``InvalidRecipeError`` naming the key on layouts they do not support; a
caller that knows the rule (``adapt[2]``) re-raises with it. ``describe_adapt`` runs the same checks
on shapes alone, so planning, which never reads tensor data, reports exactly what execution does.
``interpolate`` lives in :mod:`app.engine.ops.interpolate`, ``kernel_resize`` in
:mod:`app.engine.ops.kernel`; this module dispatches to them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from app.engine._lazy import LazyModule

if TYPE_CHECKING:
    import torch
else:  # torch loads on first use: planning (describe_*) never needs it
    torch = LazyModule("torch")

from app.engine.errors import InvalidRecipeError
from app.engine.meta import DTYPE_SIZES, is_floating
from app.engine.ops._common import Shape
from app.engine.ops._common import as_shape as _shape
from app.engine.ops._common import dtype_name as _dtype_name
from app.engine.ops._common import finish as _finish
from app.engine.ops._common import who as _who
from app.engine.ops._common import work as _work
from app.engine.ops.initialize import resolve_init, sample
from app.engine.ops.interpolate import (
    INTERPOLATE_MODES,
    InterpolateOptions,
    check_interpolate,
    interpolate_pos_embed,
)
from app.engine.ops.kernel import check_kernel_resize, kernel_resize

__all__ = [
    "CHANNEL_FILLS",
    "INTERPOLATE_MODES",
    "OPS",
    "RESIZE_FILLS",
    "InterpolateOptions",
    "adapt_channels",
    "apply_adapt",
    "cast",
    "describe_adapt",
    "describe_cast",
    "interpolate_pos_embed",
    "kernel_resize",
    "resize",
]

OPS = ("channels", "resize", "interpolate", "kernel_resize")
CHANNEL_FILLS = ("zeros", "random", "mean", "repeat")
RESIZE_FILLS = ("zeros", "random", "mean", "normal_like")
# The options each op takes besides shapes, key, generator and module (a rule's fields).
_OPTIONS = {
    "channels": ("fill",),
    "resize": ("fill",),
    "interpolate": ("prefix_tokens", "mode", "antialias", "grid", "source_grid"),
    "kernel_resize": ("mode", "antialias"),
}


def describe_adapt(
    op: str,
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    *,
    key: str | None = None,
    **options: Any,
) -> str | None:
    """Check an adapt op against shapes alone and describe it, as ``apply_adapt`` would.

    Args:
        op: one of ``OPS``.
        source_shape: the incoming tensor's shape.
        target_shape: the shape the target expects.
        key: the target key, for error messages.
        **options: the rule's options for that op: ``fill`` (``channels``, ``resize``);
            ``prefix_tokens``, ``mode``, ``antialias``, ``grid``, ``source_grid``
            (``interpolate``); ``mode``, ``antialias`` (``kernel_resize``).

    Returns:
        The report's op description, or ``None`` when the shapes already agree.

    Raises:
        InvalidRecipeError: unknown op, option or fill, or a layout the op does not support.
    """
    _check_options(op, options, key)
    src, dst = _shape(source_shape), _shape(target_shape)
    if op == "channels":
        return _check_channels(src, dst, _need_fill(op, options.get("fill"), key), key)
    if op == "resize":
        return _check_resize(src, dst, _need_fill(op, options.get("fill"), key), key)
    if op == "interpolate":
        return check_interpolate(src, dst, key=key, **options).description
    return check_kernel_resize(src, dst, key=key, **options)


def apply_adapt(
    op: str,
    t: torch.Tensor,
    target_shape: Sequence[int],
    *,
    generator: torch.Generator | None = None,
    key: str | None = None,
    module: str | None = None,
    **options: Any,
) -> tuple[torch.Tensor, str | None]:
    """Run the adapt op a rule names.

    Args:
        op: one of ``OPS``.
        t: the incoming tensor.
        target_shape: the shape the target expects.
        generator: the stream for ``random`` / ``normal_like`` fills and new prefix tokens
            (``initialize.key_generator(seed, key)``).
        key: the target key, for error messages and for ``random``'s choice of init.
        module: the target module type (``Conv2d``), for ``random``'s choice of init.
        **options: the rule's options, as for :func:`describe_adapt`.

    Returns:
        The adapted tensor and its description (``t`` itself and ``None`` when nothing changed).

    Raises:
        InvalidRecipeError: unknown op, option or fill, or a layout the op does not support.
    """
    _check_options(op, options, key)
    if op in ("channels", "resize"):
        fn = adapt_channels if op == "channels" else resize
        fill = _need_fill(op, options.get("fill"), key)
        return fn(t, target_shape, fill=fill, generator=generator, key=key, module=module)
    if op == "interpolate":
        grid = InterpolateOptions(**options)
        return interpolate_pos_embed(t, target_shape, grid, generator=generator, key=key)
    return kernel_resize(t, target_shape, key=key, **options)


def _check_options(op: str, options: dict[str, Any], key: str | None) -> None:
    allowed = _OPTIONS.get(op)
    if allowed is None:
        raise InvalidRecipeError(
            f"{_who(key)}: unknown adapt op {op!r}; use one of {', '.join(OPS)}"
        )
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise InvalidRecipeError(
            f"{_who(key)}: adapt op {op} takes {', '.join(allowed)}, not {', '.join(unknown)}"
        )


def adapt_channels(
    t: torch.Tensor,
    target_shape: Sequence[int],
    *,
    fill: str,
    generator: torch.Generator | None = None,
    key: str | None = None,
    module: str | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Pad or crop dim 1 (input channels) of a linear (rank 2) or conv (rank 3-5) weight.

    ``repeat`` is timm's ``adapt_input_conv``: to one channel it sums the source channels (an
    RGB stem becomes a grey one that gives the same activation for a grey image); to any other
    count it tiles the source channels, crops to the target count and rescales the whole weight
    by src/dst. With a 3-channel source (timm's only case) the values are exactly timm's. The
    rescaling keeps an input whose channels are all equal giving the same activation only when
    dst is a multiple of src (3 -> 6); otherwise (3 -> 4) the response changes by a channel's
    share. Fewer target channels than source (but more than one) keep the first N, rescaled.

    The other fills keep the source channels and crop to the first N when there are fewer target
    channels. With more, the new ones are ``zeros``, ``random`` (the layer's ``auto`` init:
    kaiming_normal fan_out for a conv, trunc_normal .02 for a linear) or ``mean`` (the mean of
    the source channels).

    Args:
        t: the source weight.
        target_shape: the target shape; every dim but 1 must already match.
        fill: one of ``CHANNEL_FILLS``.
        generator: the stream for ``random``; required for it.
        key: the target key, for messages and for ``random``'s choice of init.
        module: the target module type, for ``random``'s choice of init.

    Returns:
        The adapted weight in ``t``'s dtype and e.g. ``channels(3->4, fill=repeat)``;
        ``t`` itself and ``None`` when the shapes already agree.

    Raises:
        InvalidRecipeError: unknown fill, or a shape change beyond dim 1.
    """
    target = _shape(target_shape)
    description = _check_channels(_shape(t.shape), target, fill, key)
    if description is None:
        return t, None
    w = _work(t, key, "channels")
    src, dst = w.shape[1], target[1]
    if fill == "repeat" and dst == 1:
        out = w.sum(dim=1, keepdim=True)
    elif fill == "repeat":
        reps = math.ceil(dst / src)
        tiled = w.repeat(1, reps, *([1] * (w.dim() - 2)))
        out = tiled[:, :dst] * (src / dst)
    elif dst < src:
        out = w[:, :dst]
    else:
        new_shape = (target[0], dst - src, *target[2:])
        if fill == "zeros":
            new = w.new_zeros(new_shape)
        elif fill == "mean":
            new = w.mean(dim=1, keepdim=True).expand(new_shape)
        else:
            new = _init_like(w, target, key, module, generator)[:, src:]
        out = torch.cat([w, new], dim=1)
    return _finish(out, t), description


def resize(
    t: torch.Tensor,
    target_shape: Sequence[int],
    *,
    fill: str,
    generator: torch.Generator | None = None,
    key: str | None = None,
    module: str | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Crop or pad any dims (a classifier head, an embedding table) to the target shape.

    The overlapping block is copied. New slices are ``zeros``; ``random`` (the key's ``auto``
    init: trunc_normal .02 for a 2-D weight, zeros for a bias); ``mean`` (the mean of the
    existing slices along the grown dim, dims grown in order); or ``normal_like`` (a normal with
    the mean and population std of the kept block).

    Args:
        t: the source tensor.
        target_shape: the target shape, of the same rank.
        fill: one of ``RESIZE_FILLS``.
        generator: the stream for ``random`` / ``normal_like``; required for them.
        key: the target key, for messages and for ``random``'s choice of init.
        module: the target module type, for ``random``'s choice of init.

    Returns:
        The resized tensor in ``t``'s dtype and e.g. ``resize([1000, 512]->[10, 512], fill=zeros)``;
        ``t`` itself and ``None`` when the shapes already agree.

    Raises:
        InvalidRecipeError: unknown fill, a rank change, or a fill with nothing to draw from.
    """
    target = _shape(target_shape)
    description = _check_resize(_shape(t.shape), target, fill, key)
    if description is None:
        return t, None
    w = _work(t, key, "resize")
    overlap = tuple(slice(0, min(s, d)) for s, d in zip(w.shape, target, strict=True))
    kept = w[overlap]
    if fill == "mean":
        out = kept
        for dim, size in enumerate(target):
            grow = size - out.shape[dim]
            if grow > 0:
                pad_shape = (*out.shape[:dim], grow, *out.shape[dim + 1 :])
                pad = out.mean(dim=dim, keepdim=True).expand(pad_shape)
                out = torch.cat([out, pad], dim=dim)
        return _finish(out, t), description
    if fill == "zeros":
        out = w.new_zeros(target)
    elif fill == "random":
        out = _init_like(w, target, key, module, generator)
    else:
        std, mean = torch.std_mean(kept, correction=0)
        drawn = torch.empty(target).normal_(
            float(mean), float(std), generator=_need_generator(generator, fill, key)
        )
        out = drawn.to(device=w.device, dtype=w.dtype)
    out[overlap] = kept
    return _finish(out, t), description


def cast(t: torch.Tensor, dtype: str, *, key: str | None = None) -> tuple[torch.Tensor, str | None]:
    """Cast a floating tensor to another floating dtype.

    Args:
        t: the tensor.
        dtype: a canonical floating dtype name (``float32``, ``float16``, ``bfloat16`` …).
        key: the key, for messages.

    Returns:
        The cast tensor and e.g. ``cast(float32->bfloat16)``; ``t`` itself and ``None`` when it
        already has that dtype.

    Raises:
        InvalidRecipeError: an unknown dtype, or a cast to or from a non-floating dtype (integer
            buffers such as position ids must keep their dtype).
    """
    description = describe_cast(_dtype_name(t.dtype), dtype, key=key)
    if description is None:
        return t, None
    return t.to(getattr(torch, dtype)), description


def describe_cast(source_dtype: str, dtype: str, *, key: str | None = None) -> str | None:
    """Check a cast on dtype names alone and describe it, as ``cast`` would.

    Args:
        source_dtype: the tensor's canonical dtype name.
        dtype: the requested canonical dtype name.
        key: the key, for messages.

    Returns:
        ``cast(float32->bfloat16)``, or ``None`` when the dtypes agree.

    Raises:
        InvalidRecipeError: see ``cast``.
    """
    if dtype not in DTYPE_SIZES:
        raise InvalidRecipeError(
            f"{_who(key)}: unknown dtype {dtype!r}; use one of {', '.join(DTYPE_SIZES)}"
        )
    if source_dtype == dtype:
        return None
    if not (is_floating(source_dtype) and is_floating(dtype)):
        raise InvalidRecipeError(
            f"{_who(key)}: cannot cast {source_dtype} to {dtype}; "
            "only floating tensors change dtype"
        )
    return f"cast({source_dtype}->{dtype})"


def _check_channels(src: Shape, dst: Shape, fill: str, key: str | None) -> str | None:
    if fill not in CHANNEL_FILLS:
        raise InvalidRecipeError(
            f"{_who(key)}: unknown channels fill {fill!r}; use one of {', '.join(CHANNEL_FILLS)}"
        )
    if src == dst:
        return None
    if len(src) != len(dst) or not 2 <= len(src) <= 5:
        raise InvalidRecipeError(
            f"{_who(key)}: channels adapts dim 1 of a linear (rank 2) or conv (rank 3-5) "
            f"weight, got {list(src)} -> {list(dst)}; use resize for other layouts"
        )
    if src[:1] + src[2:] != dst[:1] + dst[2:]:
        raise InvalidRecipeError(
            f"{_who(key)}: channels changes dim 1 only, but {list(src)} -> {list(dst)} "
            "differs elsewhere; use resize"
        )
    if src[1] == 0 or dst[1] == 0:
        raise InvalidRecipeError(
            f"{_who(key)}: channels needs at least one channel on each side, "
            f"got {src[1]} -> {dst[1]}"
        )
    return f"channels({src[1]}->{dst[1]}, fill={fill})"


def _check_resize(src: Shape, dst: Shape, fill: str, key: str | None) -> str | None:
    if fill not in RESIZE_FILLS:
        raise InvalidRecipeError(
            f"{_who(key)}: unknown resize fill {fill!r}; use one of {', '.join(RESIZE_FILLS)}"
        )
    if src == dst:
        return None
    if len(src) != len(dst):
        raise InvalidRecipeError(
            f"{_who(key)}: resize keeps the rank, got {list(src)} -> {list(dst)}; "
            "reshape is not an adapt op"
        )
    kept = math.prod(min(s, d) for s, d in zip(src, dst, strict=True))
    if fill in ("mean", "normal_like") and kept == 0 and math.prod(dst) > 0:
        raise InvalidRecipeError(
            f"{_who(key)}: resize fill {fill} needs existing values, but {list(src)} -> "
            f"{list(dst)} keeps none; use zeros or random"
        )
    return f"resize({list(src)}->{list(dst)}, fill={fill})"


def _need_fill(op: str, fill: str | None, key: str | None) -> str:
    if fill is None:
        fills = CHANNEL_FILLS if op == "channels" else RESIZE_FILLS
        raise InvalidRecipeError(f"{_who(key)}: {op} needs a fill, one of {', '.join(fills)}")
    return fill


def _need_generator(
    generator: torch.Generator | None, fill: str, key: str | None
) -> torch.Generator:
    if generator is None:
        # A caller bug, not bad input: random fills must be seeded from (seed, key).
        raise TypeError(f"{_who(key)}: fill={fill} draws random values; pass a generator")
    return generator


def _init_like(
    w: torch.Tensor,
    shape: Shape,
    key: str | None,
    module: str | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """A tensor of ``shape`` drawn with the init ``auto`` would pick for this key."""
    gen = _need_generator(generator, "random", key)
    record = resolve_init(key or "weight", shape, "float32", module=module)
    drawn = sample(record.fn, record.args, shape, generator=gen)
    return drawn.to(device=w.device, dtype=w.dtype)
