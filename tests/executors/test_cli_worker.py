"""``graft worker --executor celery`` refuses what cannot work, in one line (exit 2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _worker(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "worker", *args],
        cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--executor", "celery"], {"GRAFT_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"},
         "GRAFT_DATABASE_URL is SQLite"),
        (["--executor", "celery"], {"GRAFT_BROKER_URL": ""}, "needs GRAFT_BROKER_URL"),
        (["--executor", "celery", "--queues", "gpu,tpu"], {}, "--queues takes gpu and/or cpu"),
        (["--executor", "celery", "--device", "mps"], {}, "--device takes cpu, cuda or cuda:N"),
        (["--executor", "celery", "--queues", "gpu", "--device", "cpu"], {},
         "--queues gpu needs a CUDA device (--device cpu); consume cpu only: --queues cpu"),
        (["--executor", "dask"], {}, "--executor takes local or celery"),
    ],
)  # fmt: skip
def test_refused_in_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    env = {"GRAFT_DATABASE_URL": "sqlite:///graft.db", **env}
    if "--queues" in args or "--device" in args:
        env["GRAFT_DATABASE_URL"] = "postgresql+psycopg://postgres@127.0.0.1:1/none"
        env["GRAFT_BROKER_URL"] = "amqp://guest:guest@127.0.0.1:1//"
    result = _worker(tmp_path, *args, **env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graft: error: "), result.stderr
    assert message in lines[0]


@pytest.mark.skipif(_has_cuda(), reason="needs a host without CUDA")
def test_a_gpu_worker_without_cuda_refuses_to_start(tmp_path: Path) -> None:
    env = {
        "GRAFT_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none",
        "GRAFT_BROKER_URL": "amqp://guest:guest@127.0.0.1:1//",
    }
    result = _worker(tmp_path, "--executor", "celery", "--queues", "gpu", **env)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "graft: error: --queues gpu needs a CUDA device (torch sees no CUDA device on this "
        "host); consume cpu only: --queues cpu"
    ]


def test_serve_with_celery_refuses_sqlite(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "serve", "--port", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
        env={**os.environ, "GRAFT_EXECUTOR": "celery", "GRAFT_DATABASE_URL": "sqlite:///g.db",
             "GRAFT_BROKER_URL": "amqp://guest:guest@127.0.0.1:5672//"},
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "graft: error: the celery executor needs a database every host can reach: "
        "GRAFT_DATABASE_URL is SQLite; use PostgreSQL (postgresql+psycopg://user@host/graft)"
    ]
    assert not (tmp_path / "g.db").exists()  # refused before anything was made
