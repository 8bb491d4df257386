"""What a running ``graft serve`` costs, read from /proc (Linux): memory, descriptors, temp files.

The API is the ``graft serve`` process itself; inspectors and workers are its children,
told apart by their command lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["Footprint", "footprint"]


def _status(pid: int) -> dict[str, int]:
    fields: dict[str, int] = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0]) // 1024  # MiB
    except OSError:
        pass
    return fields


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _fds(pid: int) -> int:
    try:
        return len(list(Path(f"/proc/{pid}/fd").iterdir()))
    except OSError:
        return -1


@dataclass(frozen=True)
class Footprint:
    """One reading. Memory in MiB: ``*_rss`` now, ``*_peak`` the high-water mark (VmHWM)."""

    api_rss: int
    api_peak: int
    api_fds: int
    inspectors_rss: int
    inspectors_peak: int
    temp_entries: int

    def line(self) -> str:
        return (
            f"API rss {self.api_rss} MiB (peak {self.api_peak}), {self.api_fds} fds; "
            f"inspectors rss {self.inspectors_rss} MiB (peak, summed {self.inspectors_peak}); "
            f"{self.temp_entries} temp entries"
        )


def footprint(api_pid: int, tmp_dir: Path) -> Footprint:
    """Read the API process, its inspector children and the store's temp folder."""
    api = _status(api_pid)
    inspectors = [_status(c) for c in _children(api_pid) if "app.sandbox.pool" in _cmdline(c)]
    try:
        temp = len(list(tmp_dir.iterdir()))
    except OSError:
        temp = -1
    return Footprint(
        api_rss=api.get("VmRSS", 0),
        api_peak=api.get("VmHWM", 0),
        api_fds=_fds(api_pid),
        inspectors_rss=sum(s.get("VmRSS", 0) for s in inspectors),
        inspectors_peak=sum(s.get("VmHWM", 0) for s in inspectors),
        temp_entries=temp,
    )
