"""The torch zip container written record by record: what ``torch.save`` of a dict writes,
without holding the dict.

``torch.save`` pickles the whole dict first, so every tensor is alive at once (676 MB for a
400 MB checkpoint). The format does not need that: ``torch.load`` reads the zip's central
directory, so the ``data/N`` records can come first, each as it is produced or copied in the
kernel, and ``data.pkl`` last. The pickle is emitted opcode by opcode with the globals
``torch.save`` uses (``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage``…), so the
output loads with ``torch.load(weights_only=True)`` and writing it never imports torch.
Every field is fixed (timestamps, names, alignment), so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from app.engine.errors import GraftError
from app.engine.output.files import OutputFile

__all__ = ["STORAGE_TYPES", "ZipRecords", "state_dict_pickle"]

ARCHIVE = "archive"  # the one top-level folder; torch.load accepts any name
ALIGN = 64  # torch aligns record data to 64 bytes (mmap loading relies on it)
_U32 = 0xFFFFFFFF
_UTF8 = 0x800
_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, torch's own fixed date
_PAD_ID = 0x4246  # "FB": the extra-field id torch pads local headers with

Write = Callable[[bytes], object]

# dtype -> the typed-storage class torch.save pickles; dtypes without one (float8, uint16…)
# take the torch.save path instead.
STORAGE_TYPES = {
    "float64": "DoubleStorage",
    "float32": "FloatStorage",
    "float16": "HalfStorage",
    "bfloat16": "BFloat16Storage",
    "complex64": "ComplexFloatStorage",
    "complex128": "ComplexDoubleStorage",
    "int64": "LongStorage",
    "int32": "IntStorage",
    "int16": "ShortStorage",
    "int8": "CharStorage",
    "uint8": "ByteStorage",
    "bool": "BoolStorage",
}


@dataclass
class _Member:
    name: bytes
    header_at: int
    size: int
    written_crc: int = 0  # what the local header holds
    crc: int = -1  # the final CRC-32 (set_crc), when it differs

    def __post_init__(self) -> None:
        if self.crc == -1:
            self.crc = self.written_crc


@dataclass
class ZipRecords:
    """Stored (uncompressed) zip members appended to an :class:`OutputFile`.

    A record's local header is written with a zero CRC before its data (the data may be
    copied in the kernel, never seen here); :meth:`close` patches each CRC in place and
    writes the central directory, in ZIP64 form once offsets pass 4 GiB.
    """

    out: OutputFile
    members: list[_Member] = field(default_factory=list)

    def begin(self, name: str, size: int, crc: int = 0) -> int:
        """Write the local header of member ``name`` (``size`` bytes of data to follow, whose
        CRC-32 is ``crc`` when already known); returns the member's index, for
        :meth:`set_crc`."""
        if size >= _U32:
            raise GraftError(
                f"{name}: a record of {size} bytes is over the 4 GiB the torch format's "
                "headers hold here; write safetensors instead"
            )
        raw = f"{ARCHIVE}/{name}".encode()
        at = self.out.position
        pad = -(at + 30 + len(raw) + 4) % ALIGN
        extra = struct.pack("<HH", _PAD_ID, pad) + b"Z" * pad
        header = struct.pack(
            "<IHHHHHIIIHH", 0x04034B50, 20, _UTF8, 0, 0, _DOS_DATE, crc, size, size, len(raw),
            len(extra),
        )  # fmt: skip
        self.out.write_all(header + raw + extra)
        self.members.append(_Member(raw, at, size, crc))
        return len(self.members) - 1

    def write(self, name: str, data: bytes) -> None:
        """A whole member whose bytes are at hand."""
        import zlib

        index = self.begin(name, len(data))
        self.out.write_all(data)
        self.set_crc(index, zlib.crc32(data))

    def set_crc(self, index: int, crc: int) -> None:
        self.members[index].crc = crc

    def close(self) -> None:
        """Patch every local header's CRC, then write the central directory."""
        import os

        for m in self.members:
            if m.crc != m.written_crc:  # (a CRC known at begin() is in place already)
                os.pwrite(self.out.fd, struct.pack("<I", m.crc), m.header_at + 14)
        start = self.out.position
        directory = io.BytesIO()
        for m in self.members:
            far = m.header_at >= _U32
            extra = struct.pack("<HHQ", 0x0001, 8, m.header_at) if far else b""
            directory.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    45 if far else 20,
                    45 if far else 20,
                    _UTF8,
                    0,
                    0,
                    _DOS_DATE,
                    m.crc,
                    m.size,
                    m.size,
                    len(m.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    _U32 if far else m.header_at,
                )
                + m.name
                + extra
            )
        raw = directory.getvalue()
        self.out.write_all(raw)
        count, end = len(self.members), self.out.position
        if start >= _U32 or count >= 0xFFFF:
            self.out.write_all(
                struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count,
                            len(raw), start)
                + struct.pack("<IIQI", 0x07064B50, 0, end, 1)
            )  # fmt: skip
            count16, start32 = 0xFFFF, _U32
        else:
            count16, start32 = count, start
        self.out.write_all(
            struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count16, count16, len(raw), start32, 0)
        )


def state_dict_pickle(tensors: list[tuple[str, str, tuple[int, ...]]]) -> bytes:
    """The ``data.pkl`` of ``torch.save({key: tensor})`` for contiguous tensors whose
    storages are records ``data/0``, ``data/1``… in the order given.

    Args:
        tensors: ``(key, dtype, shape)`` per tensor, in record order.

    Returns:
        Protocol-2 pickle bytes, the opcodes ``torch.save`` emits (globals by name only).
    """
    out = io.BytesIO()
    w = out.write
    w(pickle.PROTO + b"\x02" + pickle.EMPTY_DICT)
    if tensors:
        w(pickle.MARK)
    for index, (key, dtype, shape) in enumerate(tensors):
        numel = 1
        for n in shape:
            numel *= n
        strides, step = [], 1
        for n in reversed(shape):
            strides.append(step)
            step *= n
        _unicode(w, key)
        w(b"ctorch._utils\n_rebuild_tensor_v2\n" + pickle.MARK)
        w(pickle.MARK)
        _unicode(w, "storage")
        w(f"ctorch\n{STORAGE_TYPES[dtype]}\n".encode())
        _unicode(w, str(index))
        _unicode(w, "cpu")
        _int(w, numel)
        w(pickle.TUPLE + pickle.BINPERSID)
        _int(w, 0)
        _tuple(w, shape)
        _tuple(w, tuple(reversed(strides)))
        w(pickle.NEWFALSE + b"ccollections\nOrderedDict\n" + pickle.EMPTY_TUPLE + pickle.REDUCE)
        w(pickle.TUPLE + pickle.REDUCE)
    if tensors:
        w(pickle.SETITEMS)
    w(pickle.STOP)
    return out.getvalue()


def _unicode(w: Write, text: str) -> None:
    raw = text.encode("utf-8", "surrogatepass")
    w(pickle.BINUNICODE + struct.pack("<I", len(raw)) + raw)


def _int(w: Write, n: int) -> None:
    if 0 <= n < 0x100:
        w(pickle.BININT1 + bytes([n]))
    elif -(2**31) <= n < 2**31:
        w(pickle.BININT + struct.pack("<i", n))
    else:
        raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
        w(pickle.LONG1 + bytes([len(raw)]) + raw)


def _tuple(w: Write, values: tuple[int, ...]) -> None:
    w(pickle.MARK)
    for n in values:
        _int(w, n)
    w(pickle.TUPLE)
