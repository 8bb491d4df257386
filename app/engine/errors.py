"""The engine's one error hierarchy.

Every message names the key, rule or file at fault and says how to fix it. Each class carries
a stable ``type`` (the problem+json slug the API serves) and the CLI exit code it maps to.
"""

from __future__ import annotations

__all__ = [
    "DeviceUnavailableError",
    "GraftError",
    "InvalidRecipeError",
    "InvalidTargetError",
    "PolicyError",
    "TooLargeError",
    "UnreadableCheckpointError",
    "UnsafeCheckpointError",
]


class GraftError(Exception):
    """Base class of every error the engine raises on purpose."""

    type: str = "graft-error"
    exit_code: int = 2

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UnsafeCheckpointError(GraftError):
    """The file asks for code to run (a pickle global outside the allow-list, TorchScript)."""

    type = "unsafe-checkpoint"


class UnreadableCheckpointError(GraftError):
    """The file is empty, truncated, inconsistent or not a checkpoint at all."""

    type = "unreadable-checkpoint"


class TooLargeError(GraftError):
    """A size limit was exceeded (header, expansion, element budget)."""

    type = "too-large"


class InvalidRecipeError(GraftError):
    """The recipe is malformed; ``rule`` names the offending rule, e.g. ``rename[3]``."""

    type = "invalid-recipe"

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(f"{rule}: {message}" if rule else message)
        self.rule = rule


class InvalidTargetError(GraftError):
    """The target (template, skeleton, architecture) cannot be used."""

    type = "invalid-target"


class DeviceUnavailableError(GraftError):
    """The device asked for (``cuda``, ``cuda:N``) is not there, or is not a device name."""

    type = "device-unavailable"


class PolicyError(GraftError):
    """The recipe's own policy refused the conversion (strict, shape_mismatch: error).

    Unlike the others this is not bad input: the report is still produced and written.
    """

    type = "conversion-refused"
    exit_code = 1
