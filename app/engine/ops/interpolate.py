"""``interpolate``: resample a ViT absolute position embedding to a new grid, as timm does.

The op is timm's ``resample_abs_pos_embed``: the leading prefix tokens (class, distillation,
register tokens) are set aside, the rest is read as an ``h x w`` grid of C channels and resampled
with ``F.interpolate`` (``bicubic`` and ``antialias=True`` by default, ``align_corners=False``),
in float32, then the prefix goes back in front and the input's dtype is restored.

Beyond timm's function, the two sides may hold different prefix-token counts
(``prefix_tokens: {source: N, target: M}``): the first ``min(N, M)`` source prefix tokens are
kept, surplus source ones are dropped, and extra target ones are initialised like a ViT's own
(trunc_normal, std .02, cut at ±2 std, from the key's seeded stream). The description says
which, so the report does. Grids default to squares; ``grid`` / ``source_grid`` give ``[h, w]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.engine._lazy import LazyModule
from app.engine.errors import InvalidRecipeError
from app.engine.ops._common import as_shape, finish, who, work
from app.engine.ops.initialize import sample

if TYPE_CHECKING:
    import torch
    import torch.nn.functional as F
else:  # torch loads on first use: planning (check_interpolate) never needs it
    torch = LazyModule("torch")
    F = LazyModule("torch.nn.functional")

__all__ = [
    "INTERPOLATE_MODES",
    "GridPlan",
    "InterpolateOptions",
    "check_interpolate",
    "interpolate_pos_embed",
]

INTERPOLATE_MODES = ("bicubic", "bilinear", "nearest")
# A new prefix token is drawn as a ViT draws its cls_token: trunc_normal .02, cut at ±2 std.
_PREFIX_INIT = {"mean": 0.0, "std": 0.02, "a": -0.04, "b": 0.04}


@dataclass(frozen=True)
class GridPlan:
    """What ``interpolate`` does to one tensor, decided from shapes alone.

    Attributes:
        description: the report's op text, ``None`` when the shapes already agree.
        source_prefix: prefix tokens on the source side.
        target_prefix: prefix tokens on the target side.
        source_grid: ``(h, w)`` of the source grid.
        target_grid: ``(h, w)`` of the target grid.
        antialias: whether the resampling antialiases (never for ``nearest``).
    """

    description: str | None
    source_prefix: int = 0
    target_prefix: int = 0
    source_grid: tuple[int, int] = (0, 0)
    target_grid: tuple[int, int] = (0, 0)
    antialias: bool = False


def check_interpolate(
    source_shape: Sequence[int],
    target_shape: Sequence[int],
    *,
    prefix_tokens: int | Mapping[str, int] = 1,
    mode: str = "bicubic",
    antialias: bool = True,
    grid: Sequence[int] | None = None,
    source_grid: Sequence[int] | None = None,
    key: str | None = None,
) -> GridPlan:
    """Check ``interpolate`` against shapes alone.

    Args:
        source_shape: the embedding's shape, ``[1, N, C]`` or ``[N, C]``.
        target_shape: the target shape, same rank and channel count.
        prefix_tokens: leading non-grid tokens, the same count on both sides (an int) or
            ``{"source": N, "target": M}``.
        mode: one of ``INTERPOLATE_MODES``.
        antialias: antialias when downsampling (``bicubic`` / ``bilinear`` only).
        grid: the target grid ``[h, w]``; default a square.
        source_grid: the source grid ``[h, w]``; default a square.
        key: the target key, for messages.

    Returns:
        The plan; its ``description`` is ``None`` when the shapes already agree.

    Raises:
        InvalidRecipeError: an unknown mode, a bad prefix count or grid, or shapes that are not
            prefix tokens plus the grid.
    """
    if mode not in INTERPOLATE_MODES:
        raise InvalidRecipeError(
            f"{who(key)}: unknown interpolate mode {mode!r}; "
            f"use one of {', '.join(INTERPOLATE_MODES)}"
        )
    if not isinstance(antialias, bool):
        raise InvalidRecipeError(f"{who(key)}: antialias is true or false, got {antialias!r}")
    src_prefix, dst_prefix = _prefix_counts(prefix_tokens, key)
    src, dst = as_shape(source_shape), as_shape(target_shape)
    if src == dst:
        return GridPlan(None)
    if len(src) != len(dst) or len(src) not in (2, 3) or (len(src) == 3 and src[0] != dst[0]):
        raise InvalidRecipeError(
            f"{who(key)}: interpolate takes a position embedding [1, N, C] or [N, C] on both "
            f"sides, got {list(src)} -> {list(dst)}"
        )
    if len(src) == 3 and src[0] != 1:
        raise InvalidRecipeError(
            f"{who(key)}: interpolate takes a position embedding [1, N, C], got {list(src)}"
        )
    if src[-1] != dst[-1]:
        raise InvalidRecipeError(
            f"{who(key)}: interpolate keeps the channels, got {src[-1]} -> {dst[-1]}; "
            "adapt the embedding width with resize"
        )
    src_hw = _grid(src[-2], src_prefix, source_grid, "source", key)
    dst_hw = _grid(dst[-2], dst_prefix, grid, "target", key)
    aa = antialias and mode != "nearest"
    prefix = f"prefix_tokens={src_prefix}"
    if dst_prefix > src_prefix:
        prefix += f"->{dst_prefix} (+{dst_prefix - src_prefix} initialized)"
    elif dst_prefix < src_prefix:
        prefix += f"->{dst_prefix} ({src_prefix - dst_prefix} dropped)"
    description = (
        f"interpolate({src_hw[0]}x{src_hw[1]}->{dst_hw[0]}x{dst_hw[1]}, {prefix}, {mode}"
        f"{', antialias' if aa else ''})"
    )
    return GridPlan(description, src_prefix, dst_prefix, src_hw, dst_hw, aa)


@dataclass(frozen=True)
class InterpolateOptions:
    """A rule's ``interpolate`` options: how the tokens are read as a grid and resampled.

    Attributes:
        prefix_tokens: see :func:`check_interpolate`.
        mode: one of ``INTERPOLATE_MODES``.
        antialias: antialias when downsampling (``bicubic`` / ``bilinear``).
        grid: the target grid ``[h, w]``; default a square.
        source_grid: the source grid ``[h, w]``; default a square.
    """

    prefix_tokens: int | Mapping[str, int] = 1
    mode: str = "bicubic"
    antialias: bool = True
    grid: Sequence[int] | None = None
    source_grid: Sequence[int] | None = None


def interpolate_pos_embed(
    t: torch.Tensor,
    target_shape: Sequence[int],
    options: InterpolateOptions = InterpolateOptions(),
    *,
    generator: torch.Generator | None = None,
    key: str | None = None,
) -> tuple[torch.Tensor, str | None]:
    """Resample a position embedding as timm's ``resample_abs_pos_embed`` does.

    Args:
        t: the embedding, ``[1, N, C]`` or ``[N, C]``.
        target_shape: the target shape.
        options: the grid, prefix and resampling options (timm's defaults when left out).
        generator: the stream new target prefix tokens are drawn from; needed only then.
        key: the target key, for messages.

    Returns:
        The resampled embedding in ``t``'s dtype and e.g.
        ``interpolate(14x14->16x16, prefix_tokens=1, bicubic, antialias)``; ``t`` itself and
        ``None`` when the shapes already agree.

    Raises:
        InvalidRecipeError: see :func:`check_interpolate`.
    """
    plan = check_interpolate(
        t.shape, target_shape, prefix_tokens=options.prefix_tokens, mode=options.mode,
        antialias=options.antialias, grid=options.grid, source_grid=options.source_grid, key=key,
    )  # fmt: skip
    if plan.description is None:
        return t, None
    w = work(t, key, "interpolate")
    batched = w if w.dim() == 3 else w.unsqueeze(0)
    channels = batched.shape[-1]
    kept = min(plan.source_prefix, plan.target_prefix)
    parts = [batched[:, :kept]]
    if plan.target_prefix > kept:
        if generator is None:
            # A caller bug, not bad input: new tokens must be seeded from (seed, key).
            raise TypeError(f"{who(key)}: new prefix tokens are drawn; pass a generator")
        shape = (1, plan.target_prefix - kept, channels)
        drawn = sample("trunc_normal", _PREFIX_INIT, shape, generator=generator)
        parts.append(drawn.to(device=w.device, dtype=w.dtype))
    cells = batched[:, plan.source_prefix :]
    if plan.source_grid != plan.target_grid:
        (sh, sw), (dh, dw) = plan.source_grid, plan.target_grid
        cells = cells.reshape(1, sh, sw, channels).permute(0, 3, 1, 2)
        cells = F.interpolate(
            cells,
            size=(dh, dw),
            mode=options.mode,
            align_corners=None if options.mode == "nearest" else False,
            antialias=plan.antialias,
        )
        cells = cells.permute(0, 2, 3, 1).reshape(1, dh * dw, channels)
    out = torch.cat([*parts, cells], dim=1)
    if t.dim() == 2:
        out = out.squeeze(0)
    return finish(out, t), plan.description


def _prefix_counts(prefix_tokens: Any, key: str | None) -> tuple[int, int]:
    if isinstance(prefix_tokens, Mapping):
        if set(prefix_tokens) != {"source", "target"}:
            raise InvalidRecipeError(
                f"{who(key)}: prefix_tokens is a count or {{source: N, target: M}}, "
                f"got {dict(prefix_tokens)!r}"
            )
        counts = (prefix_tokens["source"], prefix_tokens["target"])
    else:
        counts = (prefix_tokens, prefix_tokens)
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidRecipeError(
                f"{who(key)}: prefix_tokens must be non-negative integers, got {prefix_tokens!r}"
            )
    return counts[0], counts[1]


def _grid(
    tokens: int, prefix: int, given: Sequence[int] | None, side: str, key: str | None
) -> tuple[int, int]:
    cells = tokens - prefix
    if given is not None:
        hw = tuple(given)
        if len(hw) != 2 or any(isinstance(d, bool) or not isinstance(d, int) for d in hw):
            raise InvalidRecipeError(
                f"{who(key)}: the {side} grid is [h, w], two integers, got {list(hw)}"
            )
        if hw[0] < 1 or hw[1] < 1 or hw[0] * hw[1] != cells:
            raise InvalidRecipeError(
                f"{who(key)}: the {side} has {tokens} tokens, which is not {prefix} prefix "
                f"token(s) plus a {hw[0]}x{hw[1]} grid"
            )
        return hw[0], hw[1]
    root = math.isqrt(cells) if cells > 0 else 0
    if cells <= 0 or root * root != cells:
        grid_name = "grid" if side == "target" else "source_grid"
        raise InvalidRecipeError(
            f"{who(key)}: the {side} has {tokens} tokens, which is not {prefix} prefix "
            f"token(s) plus a square grid; set prefix_tokens to the number of class/dist "
            f"tokens, or {grid_name}: [h, w] for a non-square grid"
        )
    return root, root
