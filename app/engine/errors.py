"""The engine's errors: subclasses of the house's one base, :class:`app.errors.GraftError`.

Every message names the key, rule or file at fault and says how to fix it. Each class carries
a stable ``type`` (the problem+json slug the API serves), its HTTP status and the CLI exit code
it maps to. ``GraftError`` is re-exported here (the engine raises it for its own internal
faults), and so is ``TooLargeError``, whose slug other layers raise too.
"""

from __future__ import annotations

from typing import Any

from app.errors import GraftError, TooLargeError

__all__ = [
    "DeviceUnavailableError",
    "GraftError",
    "InvalidRecipeError",
    "InvalidTargetError",
    "ParityFailedError",
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

    @staticmethod
    def of_report(report: dict[str, Any]) -> PolicyError:
        """The refusal a report (``ok: false``) stands for: ``parity-failed`` when parity
        refused it (SPEC §3.2), else ``conversion-refused``; the message names the first error.
        """
        parity = (report.get("verification") or {}).get("parity") or {}
        failed = parity.get("equal") is False and parity.get("policy", "error") == "error"
        cls = ParityFailedError if failed else PolicyError
        errors = [str(e) for e in report.get("errors") or []]
        if failed:
            errors = [e for e in errors if e.startswith("parity:")] or errors
        what = (
            "parity refused the conversion"
            if failed
            else "the recipe's policy refused the conversion"
        )
        if not errors:
            return cls(f"{what}; see the report")
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        return cls(f"{what}: {errors[0]}{more}; see the report")


class ParityFailedError(PolicyError):
    """The converted model computes something else than the source model (SPEC §3.2): the
    report's ``verification.parity.first_divergence`` names where. The report is written."""

    type = "parity-failed"
    title = "Parity failed"
