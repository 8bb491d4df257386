"""Copying file byte ranges inside the kernel: reflink first, then ``copy_file_range``, and
the page-aligned buffer only where the kernel refuses both.

A rename-only conversion moves gigabytes that no byte of Python needs to see. Copying them
through a user-space buffer costs a read and a write per page (measured 7-8 s of CPU for
2.2 GB here, against 0.8 s for ``cp``); ``copy_file_range`` moves the pages in the kernel, and
``FICLONERANGE`` (btrfs, XFS, bcachefs) shares the extents without moving anything. Which
method a process may use is learnt once: a refusal for one range is a refusal for the next.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import struct
import sys

from app.engine.errors import GraftError
from app.engine.options import CopyMethod

__all__ = ["CopyMethod", "KernelCopier"]

logger = logging.getLogger(__name__)

# <linux/fs.h>: _IOW(0x94, 13, struct file_clone_range), four 64-bit fields.
_FICLONERANGE = 0x4020940D
_CHUNK = 1 << 20  # the buffered fallback's page-aligned buffer
_KERNEL_STEP = 1 << 30  # copy_file_range is called for at most this much at a time
# Errors that mean "this kernel or filesystem pair will not do it", never "the data is bad".
_REFUSED = {errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM, errno.EBADF}
_REFLINK_REFUSED = _REFUSED | {errno.ENOTTY, errno.ETXTBSY}


class KernelCopier:
    """Copies ranges between open file descriptors, in the kernel when the kernel agrees.

    Args:
        methods: the methods to try, in order (tests pin ``("buffered",)`` or
            ``("kernel",)``); a method the kernel refuses is dropped for the rest of the run.

    Attributes:
        used: bytes copied per method, for the report of a benchmark and for tests.
    """

    def __init__(self, methods: tuple[CopyMethod, ...] = ("reflink", "kernel", "buffered")):
        if not sys.platform.startswith("linux"):
            methods = tuple(m for m in methods if m == "buffered") or ("buffered",)
        self._methods = list(methods)
        self._block = 0
        self._buffer: memoryview | None = None
        self.used: dict[CopyMethod, int] = {}

    def copy(self, src: int, src_offset: int, dst: int, dst_offset: int, length: int) -> None:
        """Copy ``length`` bytes of ``src`` at ``src_offset`` to ``dst`` at ``dst_offset``.

        Raises:
            GraftError: the source ended early, or every method failed.
        """
        done = 0
        while done < length:
            if not self._methods:
                raise GraftError("no way to copy bytes between these files is left")
            method = self._methods[0]
            try:
                n = self._step(
                    method, src, src_offset + done, dst, dst_offset + done, length - done
                )
            except OSError as exc:
                if exc.errno not in (_REFLINK_REFUSED if method == "reflink" else _REFUSED):
                    raise
                logger.debug("%s copy refused (%s); falling back", method, exc)
                self._methods.pop(0)
                continue
            if n == 0 and method != "reflink":
                raise GraftError("the source ended early while copying a tensor")
            if n and method != "reflink":  # reflink counts what it shared itself
                self.used[method] = self.used.get(method, 0) + n
            done += n

    def _step(
        self, method: CopyMethod, src: int, src_off: int, dst: int, dst_off: int, size: int
    ) -> int:
        if method == "reflink":
            return self._reflink(src, src_off, dst, dst_off, size)
        if method == "kernel":
            return os.copy_file_range(
                src, dst, min(size, _KERNEL_STEP), offset_src=src_off, offset_dst=dst_off
            )
        return self._buffered(src, src_off, dst, dst_off, size)

    def _reflink(self, src: int, src_off: int, dst: int, dst_off: int, size: int) -> int:
        """Share whole filesystem blocks; returns 0 (without dropping reflink) when the
        range's ends are not block-aligned, so the next method copies this range."""
        if self._block == 0:
            self._block = os.fstatvfs(dst).f_bsize or 4096
        block = self._block
        if src_off % block or dst_off % block or size < block:
            self._copy_with_next(src, src_off, dst, dst_off, size)
            return size
        whole = size - size % block
        fcntl.ioctl(dst, _FICLONERANGE, struct.pack("=qQQQ", src, src_off, whole, dst_off))
        self.used["reflink"] = self.used.get("reflink", 0) + whole
        if whole < size:
            self._copy_with_next(src, src_off + whole, dst, dst_off + whole, size - whole)
        return size

    def _copy_with_next(self, src: int, src_off: int, dst: int, dst_off: int, size: int) -> None:
        """Copy a range reflink cannot take with the methods after it (reflink stays on)."""
        rest = KernelCopier(tuple(m for m in self._methods if m != "reflink"))
        rest._buffer = self._buffer
        rest.copy(src, src_off, dst, dst_off, size)
        for method, n in rest.used.items():
            self.used[method] = self.used.get(method, 0) + n
        self._buffer = rest._buffer
        # A refusal learnt by the helper holds for this copier too.
        self._methods = ["reflink", *rest._methods]

    def _buffered(self, src: int, src_off: int, dst: int, dst_off: int, size: int) -> int:
        if self._buffer is None:
            self._buffer = memoryview(mmap.mmap(-1, _CHUNK))
        view = self._buffer[: min(size, _CHUNK)]
        n = os.preadv(src, [view], src_off)
        if n == 0:
            return 0
        written = 0
        while written < n:
            written += os.pwrite(dst, view[written:n], dst_off + written)
        return n
