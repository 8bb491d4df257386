"""The engine's errors: subclasses of the house's one base, :class:`app.errors.GraftError`.

Every message names the key, rule or file at fault and says how to fix it. Each class carries
a stable ``type`` (the problem+json slug the API serves), its HTTP status and the CLI exit code
it maps to. ``GraftError`` is re-exported here (the engine raises it for its own internal
faults), and so is ``TooLargeError``, whose slug other layers raise too.
"""

from __future__ import annotations

from app.errors import GraftError, TooLargeError

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


class UnsafeCheckpointError(GraftError):
    """The file asks for code to run (a pickle global outside the allow-list, TorchScript)."""

    type = "unsafe-checkpoint"
    status = 422


class UnreadableCheckpointError(GraftError):
    """The file is empty, truncated, inconsistent or not a checkpoint at all."""

    type = "unreadable-checkpoint"
    status = 422


class InvalidRecipeError(GraftError):
    """The recipe is malformed; ``rule`` names the offending rule, e.g. ``rename[3]``."""

    type = "invalid-recipe"
    status = 422
    rule: str | None = None

    def __init__(self, message: str, *, rule: str | None = None) -> None:
        super().__init__(f"{rule}: {message}" if rule else message, rule=rule)
        self.rule = rule


class InvalidTargetError(GraftError):
    """The target (template, skeleton, architecture) cannot be used."""

    type = "invalid-target"
    status = 422


class DeviceUnavailableError(GraftError):
    """The device asked for (``cuda``, ``cuda:N``) is not there, or is not a device name."""

    type = "device-unavailable"
    status = 422


class PolicyError(GraftError):
    """The recipe's own policy refused the conversion (strict, shape_mismatch: error).

    Unlike the others this is not bad input: the report is still produced and written.
    """

    type = "conversion-refused"
    status = 422
    exit_code = 1
