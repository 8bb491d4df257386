"""``graft submit`` without a server: one line naming the URL and ``graft serve``, at once."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.fixtures import REPO_ROOT


def test_submit_to_a_server_that_is_not_running_says_so_before_reading_the_files(
    tmp_path: Path,
) -> None:
    with socket.socket() as sock:  # a port nothing listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # A FIFO with no writer: hashing it would block, so the check must come first.
    source = tmp_path / "big.pth"
    os.mkfifo(source)

    run = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "submit", str(source),
         "arch:graft_mobilenet", "--server", f"http://127.0.0.1:{port}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip

    assert run.returncode == 2
    assert run.stderr == (
        f"graft: error: no Graft server answers at http://127.0.0.1:{port} "
        "([Errno 111] Connection refused): start one with `graft serve`, or point --server "
        "(GRAFT_SERVER) at yours\n"
    )
