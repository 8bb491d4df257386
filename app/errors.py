"""The one error base of the house (the client aside: it installs without the server).

Every error Graft raises on purpose is a :class:`GraftError` subclass, and the class says all
there is to say about it: ``type`` (the stable problem+json slug clients switch on), ``status``
(the HTTP status the API answers with), ``title``, and ``exit_code`` (what ``graft`` exits
with). One handler (``app.api.errors``) maps any of them to problem+json and one mapping
(``app.cli.main``) to an exit code; nothing looks a status up by slug or sets a type at run time.

A slug that more than one layer raises has one class here (``not-found``, ``too-large``,
``invalid-job``); a layer's own kind of it subclasses that class (and may say a better title).
This module imports nothing from the app, so the engine may use it and stay pure.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

__all__ = ["GraftError", "InternalError", "InvalidJobError", "NotFoundError", "TooLargeError"]

# The first (root) class defined for each slug: how an error that crossed a process boundary
# as JSON (a sandbox child's answer) becomes its class again.
_BY_TYPE: dict[str, type[GraftError]] = {}


class GraftError(Exception):
    """Base class of every error Graft raises on purpose.

    Args:
        message: safe to show to a client: it names the key, rule or file at fault and says
            how to fix it.
        headers: HTTP headers the API adds to the problem response (e.g. ``Retry-After``).
        **extra: more problem+json members (``rule``, ``limit`` …); ``None`` values are left out.
    """

    type: ClassVar[str] = "graft-error"
    # Unless a subclass says otherwise, the input was refused.
    status: ClassVar[int] = 422
    title: ClassVar[str | None] = None
    exit_code: ClassVar[int] = 2

    def __init__(
        self, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _BY_TYPE.setdefault(cls.type, cls)

    def __str__(self) -> str:
        return self.message

    def to_payload(self) -> dict[str, Any]:
        """The error as JSON for another process: ``type``, ``message`` and ``rule`` if any."""
        rule = self.extra.get("rule")
        payload: dict[str, Any] = {"type": self.type, "message": self.message}
        return payload | ({"rule": rule} if isinstance(rule, str) and rule else {})

    @staticmethod
    def from_payload(payload: dict[str, Any], *, default: str = "internal-error") -> GraftError:
        """The error :meth:`to_payload` wrote, as its class again (an unknown type is internal).

        Args:
            payload: ``type`` (``default`` when absent), ``message`` and maybe ``rule``.
            default: the type of a payload that names none.
        """
        cls = _BY_TYPE.get(str(payload.get("type", default)), InternalError)
        error = cls.__new__(cls)
        GraftError.__init__(error, str(payload.get("message")))
        rule = payload.get("rule")
        if isinstance(rule, str) and rule:
            error.extra["rule"] = rule
            if hasattr(cls, "rule"):  # a class that keeps the rule as an attribute too
                error.rule = rule  # type: ignore[attr-defined]
        return error

    @classmethod
    def problem_title(cls) -> str:
        """The problem's ``title``: the class's own, or its slug in words."""
        return cls.title or cls.type.replace("-", " ").capitalize()

    def prefixed(self, context: str, *, suffix: str = "") -> Self:
        """The same error (same class and fields) with ``context: `` before its message.

        For a layer that knows what was being done when a lower one refused (``source.uri``,
        ``fetching models:/m/1``); the error keeps its class, so its type and status.
        """
        clone = self.__class__.__new__(self.__class__)
        clone.__dict__.update(self.__dict__)
        clone.message = f"{context}: {self.message}{suffix}"
        clone.args = (clone.message,)
        return clone


class InternalError(GraftError):
    """Something Graft did not anticipate failed; the message goes to the log and the job."""

    type = "internal-error"
    status = 500


class NotFoundError(GraftError):
    """No such resource (a checkpoint, a job, a model version), or another owner's."""

    type = "not-found"
    status = 404
    title = "Not found"


class TooLargeError(GraftError):
    """A size limit was exceeded (a header, an expansion, an element budget, a body, a source)."""

    type = "too-large"
    status = 413


class InvalidJobError(GraftError):
    """A job request that names checkpoints, targets or references that cannot be used."""

    type = "invalid-job"
    status = 422
    title = "Invalid job"
