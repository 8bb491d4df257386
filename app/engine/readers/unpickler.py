"""A pickle reader for PyTorch checkpoints that allows less than ``torch.load(weights_only=True)``.

It never imports torch and never constructs a tensor: the globals a state dict needs resolve to
inert descriptors (which storage, which dtype, offset, shape, stride), everything else is refused
before it can be called. The result says where every tensor's bytes live, so inspection reads
headers only and conversion can copy bytes without deserialising anything.
"""

from __future__ import annotations

import collections
import io
import math
import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any

from app.engine.errors import UnreadableCheckpointError, UnsafeCheckpointError
from app.engine.meta import DTYPE_SIZES

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "DtypeMarker",
    "Global",
    "StorageRef",
    "TensorRef",
    "check_tree",
    "load_restricted",
]

# Caps on the unpickled object: real checkpoints nest a few levels and hold at most a few
# million objects (optimizer state included); anything beyond is refused, not walked.
MAX_DEPTH = 1000
MAX_NODES = 5_000_000

# torch's pickled storage class names -> canonical dtype names (torch/storage.py's map).
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexDoubleStorage": "complex128",
    "ComplexFloatStorage": "complex64",
}


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage as the pickle names it: the bytes live elsewhere (zip member, legacy record)."""

    key: str
    dtype: str
    numel: int
    view_offset: int = 0  # legacy storage views: element offset into the root storage


@dataclass(frozen=True, slots=True)
class TensorRef:
    """A strided view of a storage; carries no data."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    is_parameter: bool = False

    @property
    def dtype(self) -> str:
        return self.storage.dtype

    def extent(self) -> int:
        """Number of storage elements from ``offset`` that the view touches."""
        if any(s == 0 for s in self.shape):
            return 0
        return 1 + sum((s - 1) * st for s, st in zip(self.shape, self.stride, strict=True))


def _refuse_state(self: object, _state: Any) -> None:
    # A frozen slotted dataclass gets a __setstate__ that writes its fields anyway (for
    # pickling); pickle's BUILD would use it to rewrite a marker every later load shares.
    raise UnsafeCheckpointError(
        f"unsafe checkpoint: the pickle tries to modify {type(self).__name__.lstrip('_')}, "
        "which a weights file never does"
    )


@dataclass(frozen=True, slots=True)
class _StorageType:
    dtype: str

    __setstate__ = _refuse_state


@dataclass(frozen=True, slots=True)
class _TensorType:
    """Marker for ``torch.Tensor`` / ``torch.nn.Parameter`` named by ``_rebuild_from_type_v2``.

    Frozen and slotted like every object the allow-list hands out: they are shared by every
    load in a long-lived inspector, so a pickle's BUILD on one must fail, not change how the
    next upload is read.
    """

    is_parameter: bool

    __setstate__ = _refuse_state


@dataclass(frozen=True, slots=True)
class _Global:
    """An allow-listed function, wrapped so that BUILD cannot reach its ``__dict__`` or its
    ``__defaults__`` (a bare function would take either, for every later load)."""

    fn: Callable[..., Any]

    __setstate__ = _refuse_state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


# torch sizes, strides and offsets are int64: a larger value cannot be a real tensor.
_INT64_MAX = 2**63 - 1


def _as_int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, tuple | list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= _INT64_MAX for v in value
    ):
        raise UnreadableCheckpointError(
            f"tensor {what} is not a tuple of non-negative int64 values"
        )
    if what == "size" and math.prod(value) > _INT64_MAX:
        raise UnreadableCheckpointError(f"tensor size {list(value)} has more than 2**63 elements")
    return tuple(value)


def _rebuild_tensor_v2(
    storage: Any, offset: Any, size: Any, stride: Any, *_rest: Any, **_kw: Any
) -> TensorRef:
    if not isinstance(storage, StorageRef):
        raise UnreadableCheckpointError("tensor rebuilt from something that is not a storage")
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= _INT64_MAX:
        raise UnreadableCheckpointError("tensor storage offset is not a non-negative int")
    shape = _as_int_tuple(size, "size")
    strides = _as_int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise UnreadableCheckpointError("tensor size and stride have different ranks")
    ref = TensorRef(storage, offset, shape, strides)
    if offset + ref.extent() > storage.numel:
        raise UnreadableCheckpointError(
            f"tensor of shape {list(shape)} reads past the end of storage {storage.key!r}"
        )
    return ref


@dataclass(frozen=True, slots=True)
class _Dtype:
    """Marker for a ``torch.<dtype>`` global, as ``_rebuild_tensor_v3`` names its dtype."""

    name: str

    __setstate__ = _refuse_state


def _rebuild_tensor_v3(
    storage: Any,
    offset: Any,
    size: Any,
    stride: Any,
    _grad: Any,
    _hooks: Any,
    dtype: Any,
    *_rest: Any,
) -> TensorRef:
    # Dtypes without a typed storage class (uint16/32/64, float8) are saved on an untyped byte
    # storage, with the dtype passed separately; offset, size and stride count elements.
    if not isinstance(storage, StorageRef) or storage.dtype != "uint8":
        raise UnreadableCheckpointError("tensor rebuilt from something that is not a storage")
    if not isinstance(dtype, _Dtype):
        raise UnreadableCheckpointError("tensor rebuilt with an unknown dtype")
    item = DTYPE_SIZES[dtype.name]
    if storage.numel % item or storage.view_offset % item:
        raise UnreadableCheckpointError(
            f"storage {storage.key!r} is not a whole number of {dtype.name} elements"
        )
    typed = StorageRef(storage.key, dtype.name, storage.numel // item, storage.view_offset // item)
    return _rebuild_tensor_v2(typed, offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any) -> TensorRef:
    if not isinstance(data, TensorRef):
        raise UnreadableCheckpointError("parameter rebuilt from something that is not a tensor")
    return TensorRef(data.storage, data.offset, data.shape, data.stride, is_parameter=True)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, _state: Any) -> TensorRef:
    rebuilders = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)
    if (
        not isinstance(func, _Global)
        or func.fn not in rebuilders
        or not isinstance(new_type, _TensorType)
    ):
        raise UnsafeCheckpointError("unsafe checkpoint: tensor subclass rebuild is not allowed")
    if not isinstance(args, tuple):
        raise UnreadableCheckpointError("tensor rebuild arguments are not a tuple")
    ref: TensorRef = func(*args)
    if new_type.is_parameter:
        return _rebuild_parameter(ref)
    return ref


def _size(*args: Any) -> tuple[int, ...]:
    if len(args) == 1 and isinstance(args[0], tuple | list):
        return tuple(args[0])
    return tuple(args)


# What other formats' allow-lists (DCP's metadata) build on: wrapped functions and dtypes.
Global = _Global
DtypeMarker = _Dtype

# Every value is immutable (a type, or a frozen slotted object): see _TensorType.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _Global(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor"): _Global(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_tensor_v3"): _Global(_rebuild_tensor_v3),
    ("torch.storage", "UntypedStorage"): _StorageType("uint8"),  # sized in bytes
    ("torch._utils", "_rebuild_parameter"): _Global(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Global(_rebuild_parameter),
    ("torch._tensor", "_rebuild_from_type_v2"): _Global(_rebuild_from_type_v2),
    ("torch._tensor", "Tensor"): _TensorType(is_parameter=False),
    ("torch", "Tensor"): _TensorType(is_parameter=False),
    ("torch.nn.parameter", "Parameter"): _TensorType(is_parameter=True),
    ("torch", "Size"): _Global(_size),
}
_ALLOWED.update({("torch", name): _StorageType(dtype) for name, dtype in STORAGE_DTYPES.items()})
_ALLOWED.update({("torch", name): _Dtype(name) for name in DTYPE_SIZES})


def _memo_put(index: int) -> Callable[[Any], None]:
    """A PUT handler that refuses a memo index beyond the pickle's own length.

    CPython's C unpickler zero-fills a memo table up to the index it is given, 16 bytes per
    slot: a 9-byte pickle with ``LONG_BINPUT 2**31`` costs 32 GiB. Here the memo is a dict
    (one entry per PUT the file really holds), and an index larger than the bytes read so
    far, which no pickler writes (each memoised object costs bytes), is refused outright.
    """

    def put(self: Any) -> None:  # pickle._Unpickler's state: read, readline, memo, stack
        if index == 1:
            raw = self.readline()[:-1]
            if not raw.isdigit():
                raise UnreadableCheckpointError("corrupt pickle (PUT without an index)")
            slot = int(raw)
        elif index == 2:
            slot = self.read(1)[0]
        else:
            (slot,) = struct.unpack("<I", self.read(4))
        if slot > self._source.tell():
            raise UnreadableCheckpointError(
                f"corrupt pickle: memo index {slot} at byte {self._source.tell()} (no pickler "
                "numbers its memo beyond its own length)"
            )
        self.memo[slot] = self.stack[-1]

    return put


# The pure-Python unpickler: its memo is a dict, and its opcode table can be extended (the C
# one can be neither). Headers are small, so its speed is not what inspection waits on.
class _RestrictedUnpickler(pickle._Unpickler):
    dispatch = {
        **pickle._Unpickler.dispatch,
        pickle.PUT[0]: _memo_put(1),
        pickle.BINPUT[0]: _memo_put(2),
        pickle.LONG_BINPUT[0]: _memo_put(5),
    }

    def __init__(
        self,
        file: IO[bytes],
        *,
        storages: dict[str, StorageRef],
        extra: Mapping[tuple[str, str], Any],
    ) -> None:
        super().__init__(file, encoding="utf-8")
        self._storages = storages
        self._source = file
        self._extra = extra

    def find_class(self, module: str, name: str) -> Any:
        try:
            return (
                self._extra[(module, name)]
                if (module, name) in self._extra
                else _ALLOWED[(module, name)]
            )
        except KeyError:
            if module.startswith("torch") and name.endswith("Storage"):
                raise UnreadableCheckpointError(
                    f"unsupported tensor storage '{module}.{name}' (quantized or exotic dtype)"
                ) from None
            raise UnsafeCheckpointError(
                f"unsafe checkpoint: the pickle references '{module}.{name}', which a weights "
                "file never needs; refusing to load it (nothing was executed)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise UnreadableCheckpointError(f"unknown persistent id in pickle: {pid!r:.80}")
        if len(pid) == 5:  # zip: (storage, type, key, location, numel)
            _, stype, key, _location, numel = pid
            view = None
        elif len(pid) == 6:  # legacy: (storage, type, root_key, location, numel, view)
            _, stype, key, _location, numel, view = pid
        else:
            raise UnreadableCheckpointError("malformed storage record in pickle")
        if not isinstance(stype, _StorageType) or not isinstance(key, str):
            raise UnreadableCheckpointError("malformed storage record in pickle")
        if not isinstance(numel, int) or numel < 0:
            raise UnreadableCheckpointError(f"storage {key!r} has an invalid size")
        root = self._storages.get(key)
        if root is None:
            root = self._storages[key] = StorageRef(key, stype.dtype, numel)
        elif root.dtype != stype.dtype or root.numel != numel:
            raise UnreadableCheckpointError(f"storage {key!r} is declared twice, differently")
        if view is None:
            return root
        if not (isinstance(view, tuple) and len(view) == 3):
            raise UnreadableCheckpointError("malformed storage view in pickle")
        _view_key, offset, view_numel = view
        if not all(isinstance(v, int) and v >= 0 for v in (offset, view_numel)):
            raise UnreadableCheckpointError("malformed storage view in pickle")
        if offset + view_numel > numel:
            raise UnreadableCheckpointError(f"storage view of {key!r} exceeds its storage")
        return StorageRef(key, stype.dtype, view_numel, view_offset=offset)


def load_restricted(
    data: bytes | IO[bytes],
    *,
    storages: dict[str, StorageRef] | None = None,
    extra: Mapping[tuple[str, str], Any] | None = None,
) -> Any:
    """Unpickle one object with the allow-list above.

    Args:
        data: the pickle bytes, or a file positioned at its start (left just past its end).
        storages: collects every storage the pickle names, keyed by storage key.
        extra: more allowed globals, (module, name) -> an inert value, for a format's own
            plain records (DCP's metadata dataclasses); each must be immutable, as above.

    Returns:
        The object, with tensors replaced by :class:`TensorRef`.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allow-list.
        UnreadableCheckpointError: the pickle is truncated or malformed.
    """
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    unpickler = _RestrictedUnpickler(
        file, storages=storages if storages is not None else {}, extra=extra or {}
    )
    try:
        return unpickler.load()
    except (UnsafeCheckpointError, UnreadableCheckpointError):
        raise
    except RecursionError:
        raise UnreadableCheckpointError("pickle nests too deeply") from None
    except MemoryError:
        raise UnreadableCheckpointError("pickle asks for more memory than allowed") from None
    except Exception as exc:  # pickle raises many types on corrupt input; all mean the same
        raise UnreadableCheckpointError(
            f"corrupt pickle ({type(exc).__name__}: {str(exc)[:120]})"
        ) from None


def check_tree(
    root: Any,
    *,
    max_depth: int = MAX_DEPTH,
    max_nodes: int = MAX_NODES,
    max_tensor_bytes: int | None = None,
) -> int:
    """Validate an unpickled object without recursion: depth, node count, tensor bytes.

    Args:
        root: what :func:`load_restricted` returned.
        max_depth: deepest container nesting allowed.
        max_nodes: most objects (containers, scalars, tensors) allowed.
        max_tensor_bytes: budget for the bytes the tensors' views declare, each distinct
            view counted once (stride-0 views can declare far more than the file holds).

    Returns:
        The bytes the distinct tensor views declare.

    Raises:
        TooLargeError: a cap is exceeded.
    """
    from app.engine.errors import TooLargeError

    nodes = 0
    declared = 0
    seen: set[int] = set()
    stack: list[tuple[Any, int]] = [(root, 0)]
    while stack:
        node, depth = stack.pop()
        nodes += 1
        if nodes > max_nodes:
            raise TooLargeError(f"the pickle holds more than {max_nodes} objects")
        if depth > max_depth:
            raise TooLargeError(f"the pickle nests deeper than {max_depth} levels")
        if isinstance(node, TensorRef):
            if id(node) not in seen:
                seen.add(id(node))
                numel = 1
                for size in node.shape:
                    numel *= size
                declared += numel * DTYPE_SIZES[node.dtype]
                if max_tensor_bytes is not None and declared > max_tensor_bytes:
                    raise TooLargeError(
                        f"the tensors declare more than {max_tensor_bytes} bytes of data, far "
                        "more than the file holds (stride-0 or overlapping views)"
                    )
        elif isinstance(node, dict):
            stack.extend((v, depth + 1) for v in node.values())
            stack.extend((k, depth + 1) for k in node)
        elif isinstance(node, list | tuple | set | frozenset):
            stack.extend((v, depth + 1) for v in node)
    return declared
