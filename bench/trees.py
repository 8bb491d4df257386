"""What the benches that start ``graft serve`` from several source trees share: a free port,
a small checkpoint to convert, the load average to print beside a figure, and a git revision
exported to a temporary folder."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn

__all__ = ["REPO", "export_tree", "free_port", "load_average", "saved_net"]

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def saved_net(classes: int) -> bytes:
    """A small conv net's state dict (seeded by ``classes``), as ``torch.save`` bytes."""
    torch.manual_seed(classes)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(), nn.Linear(8, classes))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    return buf.getvalue()


def load_average() -> str:
    """The machine's load average, for a line beside a figure."""
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


def export_tree(rev: str, prefix: str) -> Path:
    """Revision ``rev`` of this repository, exported to a new temporary folder."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder
