"""``kernel_resize``: a conv kernel to a new spatial size, as timm's ``resample_patch_embed``.

This is FlexiViT's pseudo-inverse resize (Beyer et al., 2023). Resizing a patch ``x`` from the
old size to the new one is linear, ``resize(x) = B x`` with ``B`` the matrix whose column ``i``
is the resized ``i``-th basis patch (``F.interpolate``, ``bicubic`` + ``antialias`` by default).
The new kernel ``w'`` is the least-norm solution of ``<w', resize(x)> = <w, x>`` for every patch
``x``: ``w' = pinv(Bᵀ) w``, so a patch embedding fed resized patches gives the same tokens where
that is possible. The matrix and its pseudo-inverse are computed in float64 on the CPU (they are
at most ``(h·w)²`` entries) and the kernel is resampled in float64, then cast back.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from app.engine._lazy import LazyModule
from app.engine.errors import InvalidRecipeError
from app.engine.ops._common import Shape, as_shape, finish, who, work
from app.engine.ops.interpolate import INTERPOLATE_MODES

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:  # torch loads on first use: planning (check_kernel_resize) never needs it
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")

__all__ = ["KERNEL_MODES", "check_kernel_resize", "kernel_resize", "resize_matrix"]

# The resampling modes of the pseudo-inverse are those of the position-embedding resample.
KERNEL_MODES = INTERPOLATE_MODES
# pinv of a (h·w)² matrix: 64x64 kernels already mean a 4096² SVD; refuse beyond that.
_MAX_CELLS = 64 * 64


def check_kernel_resize(
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    *,
    mode: str = "bicubic",
    antialias: bool = True,
    key: str | None = None,
) -> str | None:
    """Check ``kernel_resize`` against shapes alone and describe it.

    Args:
        source_shape: ``[out, in, h, w]``.
        target_shape: ``[out, in, h', w']``.
        mode: one of ``KERNEL_MODES``.
        antialias: antialias the basis resize (``bicubic`` / ``bilinear`` only).
        key: the target key, for messages.

    Returns:
        e.g. ``kernel_resize(16x16->8x8, bicubic, antialias)``, or ``None`` when the shapes agree.

    Raises:
        InvalidRecipeError: an unknown mode, a rank other than 4, a change beyond the spatial
            dims, or a kernel too large to invert.
    """
    if mode not in KERNEL_MODES:
        raise InvalidRecipeError(
            f"{who(key)}: unknown kernel_resize mode {mode!r}; use one of {', '.join(KERNEL_MODES)}"
        )
    if not isinstance(antialias, bool):
        raise InvalidRecipeError(f"{who(key)}: antialias is true or false, got {antialias!r}")
    src, dst = as_shape(source_shape), as_shape(target_shape)
    if src == dst:
        return None
    if len(src) != 4 or len(dst) != 4 or src[:2] != dst[:2]:
        raise InvalidRecipeError(
            f"{who(key)}: kernel_resize changes the spatial dims of a conv weight "
            f"[out, in, h, w] only, got {list(src)} -> {list(dst)}"
        )
    if min(src[2:] + dst[2:]) < 1 or max(math.prod(src[2:]), math.prod(dst[2:])) > _MAX_CELLS:
        raise InvalidRecipeError(
            f"{who(key)}: kernel_resize takes kernels of 1 to {_MAX_CELLS} cells, "
            f"got {list(src)} -> {list(dst)}"
        )
    aa = antialias and mode != "nearest"
    return (
        f"kernel_resize({src[2]}x{src[3]}->{dst[2]}x{dst[3]}, {mode}{', antialias' if aa else ''})"
    )


def kernel_resize(
    t: torch.Tensor,
    target_shape: Sequence[int],
    *,
    mode: str = "bicubic",
    antialias: bool = True,
    key: str | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Resample a conv kernel (a ViT patch embedding) to a new spatial size.

    Args:
        t: the kernel, ``[out, in, h, w]``.
        target_shape: ``[out, in, h', w']``.
        mode: the interpolation that defines the patch resize.
        antialias: antialias that resize (``bicubic`` / ``bilinear``).
        key: the target key, for messages.

    Returns:
        The resampled kernel in ``t``'s dtype and its description; ``t`` itself and ``None``
        when the shapes already agree.

    Raises:
        InvalidRecipeError: see :func:`check_kernel_resize`.
    """
    description = check_kernel_resize(
        t.shape, target_shape, mode=mode, antialias=antialias, key=key
    )
    if description is None:
        return t, None
    w = work(t, key, "kernel_resize")
    src, dst = as_shape(t.shape), as_shape(target_shape)
    matrix = resize_matrix(src[2:], dst[2:], mode=mode, antialias=antialias and mode != "nearest")
    # w' = pinv(Bᵀ) w for each (out, in) kernel, as rows: w'_row = w_row pinv(Bᵀ)ᵀ = w_row pinv(B).
    pinv = torch.linalg.pinv(matrix).to(w.device)
    flat = w.to(torch.float64).reshape(src[0] * src[1], src[2] * src[3])
    out = (flat @ pinv).reshape(dst)
    return finish(out, t), description


def resize_matrix(
    old: Shape, new: Shape, *, mode: str = "bicubic", antialias: bool = True
) -> torch.Tensor:
    """``B``, float64 ``[h'·w', h·w]``: column ``i`` is the ``i``-th basis patch resized.

    Args:
        old: ``(h, w)``.
        new: ``(h', w')``.
        mode: the ``F.interpolate`` mode.
        antialias: its ``antialias``.

    Returns:
        The matrix on the CPU.
    """
    cells = old[0] * old[1]
    basis = torch.eye(cells, dtype=torch.float64).reshape(cells, 1, old[0], old[1])
    resized = F.interpolate(
        basis,
        size=tuple(new),
        mode=mode,
        align_corners=None if mode == "nearest" else False,
        antialias=antialias,
    )
    return resized.reshape(cells, new[0] * new[1]).T.contiguous()
