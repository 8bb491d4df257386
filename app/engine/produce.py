"""Produce each target tensor the plan declares: read, adapt, initialise or keep, then cast.

Only tensors that an op, a cast, an init or a template changes come through here; unchanged
ones are copied file to file by the writer without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from app.engine.devices import Device
from app.engine.errors import GraftError
from app.engine.meta import is_floating
from app.engine.ops.adapt import apply_adapt, cast
from app.engine.ops.initialize import key_generator, sample
from app.engine.ops.multi import apply_transform, merge_parts, split_part
from app.engine.plan import PlanEntry
from app.engine.readers import Source
from app.engine.target import Target
from app.engine.warning import Warning

if TYPE_CHECKING:
    import torch

__all__ = ["Producer", "check_value"]


@dataclass(frozen=True)
class Producer:
    """Everything producing a tensor needs besides its plan entry.

    Attributes:
        source: the opened source.
        target: the target (``kept`` tensors are read from it).
        seed: the recipe seed (adapt ops with random fills derive per-key generators from it).
        device: where adapt ops run; the value always comes back on the CPU.
    """

    source: Source
    target: Target
    seed: int
    device: Device

    def produce(self, entry: PlanEntry) -> torch.Tensor:
        """The value of one target key, as the plan declares it, on the CPU."""

        if entry.status == "kept":
            value = self.target.read(entry.target)
        elif entry.status == "initialized":
            value = _initialized(entry)
        elif entry.fed:
            value = self._fed(entry)
            if entry.adapt is not None:
                rule = entry.adapt
                value, _ = apply_adapt(
                    rule.op,
                    value.to(self.device.name),
                    entry.shape,
                    generator=key_generator(self.seed, entry.target),
                    key=entry.target,
                    module=entry.module,
                    **rule.options(),
                )
        else:
            raise GraftError(f"{entry.target} has no value (status {entry.status})")
        if value.is_floating_point() and is_floating(entry.dtype):
            value, _ = cast(value, entry.dtype, key=entry.target)
        result: torch.Tensor = value.to("cpu")
        return result

    def _fed(self, entry: PlanEntry) -> torch.Tensor:
        """The source's value for ``entry`` after its split or merge and its transforms."""
        if entry.merge_dim is not None:
            # The parts are read one after another; the merged tensor is this output's value.
            value = merge_parts([self.source.read(s) for s in entry.sources], entry.merge_dim)
        else:
            value = self.source.read(entry.sources[0])
            if entry.part is not None:
                value = split_part(value, entry.part)
        for rule in entry.transforms:
            value = apply_transform(rule, value)
        return value


def _initialized(entry: PlanEntry) -> torch.Tensor:
    import torch

    if entry.init is None:
        raise GraftError(f"internal error: {entry.target} is initialized without an init fn")
    if not is_floating(entry.dtype):
        if entry.init.fn not in ("zeros", "ones"):
            raise GraftError(
                f"{entry.target}: cannot initialise {entry.dtype} with {entry.init.fn}"
            )
        value: torch.Tensor = getattr(torch, entry.init.fn)(
            entry.shape, dtype=getattr(torch, entry.dtype)
        )
        return value
    gen = key_generator(entry.init.seed, entry.target)
    return sample(entry.init.fn, entry.init.args, entry.shape, generator=gen)


def check_value(entry: PlanEntry, value: torch.Tensor) -> Warning | None:
    """Refuse a value that is not what the plan declared; a warning when it holds NaN or Inf.

    Raises:
        GraftError: the shape or dtype differs from the plan (an internal error).
    """
    import torch

    if tuple(value.shape) != entry.shape or str(value.dtype).removeprefix("torch.") != entry.dtype:
        raise GraftError(
            f"internal error: {entry.target} came out as {list(value.shape)} {value.dtype}, "
            f"planned {list(entry.shape)} {entry.dtype}"
        )
    if value.is_floating_point() and value.element_size() == 1:
        # torch implements neither sum nor isfinite for float8: screen a float32 copy (a
        # float8 tensor is a quarter of that copy's size, so the bound stays the tensor's).
        value = value.float()
    # A finite sum proves every value finite without a tensor-sized mask; only a non-finite
    # sum (a NaN or Inf, or an overflow) takes the exact check.
    if (
        value.is_floating_point()
        and not bool(torch.isfinite(value.sum()))
        and not bool(torch.isfinite(value).all())
    ):
        return Warning(kind="nan_or_inf", message=entry.target)
    return None
