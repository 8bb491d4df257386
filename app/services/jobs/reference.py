"""A job's parity reference (SPEC §3.2): registered architectures only, never an import.

The job's JSON names the source's architecture (and, for skeleton and template targets, the
target's); the service turns it into the engine's :class:`~app.engine.parity_models.ParitySpec`
with ``allow_imports=False``, so no request can make a worker import a module.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from app.engine.architectures import ArchitectureRef
from app.engine.parity_models import InputSpec, ParitySpec

__all__ = ["ReferenceSpec", "parity_spec"]


class ReferenceSpec(BaseModel):
    """The models a job's parity check runs (SPEC §3.2).

    Attributes:
        architecture: the source's model, a registered architecture (``GET /v1/architectures``).
        kwargs: its keyword arguments.
        target_architecture: the target's model for skeleton and template targets (an
            architecture target's own model otherwise).
        target_kwargs: its keyword arguments.
        inputs: the inputs both models get; by default derived from the first layer.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    architecture: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$")
    kwargs: dict[str, Any] = Field(default_factory=dict)
    target_architecture: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9_.\-]+$"
    )
    target_kwargs: dict[str, Any] = Field(default_factory=dict)
    inputs: list[InputSpec] | None = Field(default=None, max_length=16)


def parity_spec(
    reference: ReferenceSpec, *, architectures: Sequence[ArchitectureRef] = ()
) -> ParitySpec:
    """The engine's parity request for ``reference``: imports are never allowed.

    Args:
        reference: the job's reference.
        architectures: the service's extra architectures (``GRAFT_ARCHITECTURES``).
    """
    target = reference.target_architecture
    return ParitySpec(
        reference=f"arch:{reference.architecture}",
        reference_kwargs=reference.kwargs,
        target_module=f"arch:{target}" if target else None,
        target_module_kwargs=reference.target_kwargs,
        inputs=reference.inputs,
        allow_imports=False,
        architectures=tuple(architectures),
    )
