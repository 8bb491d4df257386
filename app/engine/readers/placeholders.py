"""Inert stand-ins for the objects training checkpoints pickle and Graft has no use for.

Real training checkpoints pickle more than tensors: DeepSpeed's ``LossScaler``,
``ZeroStageEnum`` and ``fragment_address`` records, ``argparse.Namespace`` arguments, NumPy
random states. A format's reader names exactly the globals it expects; each one resolves to a
:class:`Placeholder` subclass made here, from that fixed list, never from the pickle. Calling
one (``REDUCE``), creating one (``NEWOBJ``) or setting its state (``BUILD``) records the
arguments and state as plain data, and nothing else: no module is imported, no code of the
named class runs. Every global outside the list is still refused by the restricted unpickler.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from app.engine.errors import UnsafeCheckpointError

__all__ = ["Placeholder", "placeholder_globals"]

_MAX_NAME = 200


class _Sealed(type):
    """The stand-ins' metaclass: shared by every load, so a pickle cannot change one."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise UnsafeCheckpointError(
            f"unsafe checkpoint: the pickle tries to modify {cls.__name__}, which a checkpoint "
            "never does"
        )

    def __delattr__(cls, name: str) -> None:
        raise UnsafeCheckpointError(f"unsafe checkpoint: the pickle tries to modify {cls.__name__}")


class Placeholder(metaclass=_Sealed):
    """An object the pickle names, kept as its class name, arguments and state.

    Attributes:
        qualname: ``module.Name`` as the pickle names it (a class attribute).
        args: the arguments the pickle would have called or created it with.
        state: what the pickle's ``BUILD`` would have set (``None`` if nothing).
    """

    __slots__ = ("args", "state")
    qualname = "?"
    args: tuple[Any, ...]
    state: Any

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", (*args, *kwargs.items()))
        object.__setattr__(obj, "state", None)
        return obj

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        """Nothing: ``__new__`` kept the arguments."""

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setattr__(self, name: str, value: Any) -> None:
        # pickle's BUILD falls back to setattr for a (state, slotstate) pair: keep it as data.
        object.__setattr__(self, "state", {**(self.state or {}), name: value})

    def __reduce__(self) -> Any:
        raise TypeError(f"a placeholder for {self.qualname} cannot be pickled again")

    def __repr__(self) -> str:
        return f"<{self.qualname} (not loaded)>"

    @property
    def first_arg(self) -> Any:
        """The first argument (an enum's value), or None."""
        return self.args[0] if self.args else None


def placeholder_globals(qualnames: Iterable[str]) -> dict[tuple[str, str], type[Placeholder]]:
    """An ``extra`` allow-list for :func:`~app.engine.readers.unpickler.load_restricted`:
    each ``module.Name`` -> its own :class:`Placeholder` subclass.

    Args:
        qualnames: dotted names the format is known to pickle (``argparse.Namespace``).

    Returns:
        ``(module, name) -> placeholder class``, to merge into a reader's allow-list.
    """
    out: dict[tuple[str, str], type[Placeholder]] = {}
    for qualname in qualnames:
        module, _, name = qualname.rpartition(".")
        if not module or len(qualname) > _MAX_NAME:
            raise ValueError(f"not a dotted global name: {qualname!r}")
        namespace = {"__slots__": (), "__module__": __name__, "qualname": qualname}
        made: type[Placeholder] = _Sealed(name, (Placeholder,), namespace)  # type: ignore[assignment]
        out[(module, name)] = made
    return out
