"""A report warning: a value with a kind and a message, not a string parsed by prefix.

Planning and writing make them; the report (:mod:`app.engine.report`) holds them. In a
``graft.report/v1`` document a warning is the string ``"<kind>: <message>"``;
:class:`Warning` writes that form and reads it back, the one place that knows it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, model_serializer, model_validator

__all__ = ["WARNING_KINDS", "Warning", "WarningKind"]

WarningKind = Literal[
    "nothing_loaded",
    "low_coverage",
    "shape_mismatch",
    "unmatched",
    "unapplied",
    "nan_or_inf",
    "parity",
]
WARNING_KINDS: tuple[WarningKind, ...] = get_args(WarningKind)


class Warning(BaseModel):
    """One warning: what kind it is and what it says.

    Its JSON form is the string ``"<kind>: <message>"``, as ``warnings`` has always held; a
    document's warning is read back into its kind here, and nowhere else.
    """

    model_config = ConfigDict(frozen=True)
    kind: WarningKind
    message: str

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        if isinstance(data, str):
            kind, _, message = data.partition(": ")
            return {"kind": kind, "message": message}
        return data

    @model_serializer(mode="plain")
    def _text(self) -> str:
        return str(self)

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"
