"""The README's service walkthrough, run as it is written, in a fresh shell without the venv
on PATH, against ``make serve PORT=N`` (and ``GRAFT_PORT``) started the way a newcomer would."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import REPO, free_port
from tests.e2e.helpers import wait_ready
from tests.parts import require_part

pytestmark = pytest.mark.e2e

MARKER = "<!-- walkthrough: tests/test_readme_walkthrough.py runs this block as it is -->"


def walkthrough() -> str:
    readme = (REPO / "README.md").read_text()
    after = readme.split(MARKER, 1)[1]
    match = re.match(r"\s*```sh\n(.*?)\n```", after, re.DOTALL)
    assert match, "the walkthrough block follows its marker"
    return match.group(1)


def _fresh_env(root: Path, **extra: str) -> dict[str, str]:
    # What a new terminal has: the system's PATH (no .venv/bin), HOME, nothing of ours.
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(root), "LANG": "C.UTF-8", **extra}


def _serve(command: list[str], root: Path, port: int, **extra: str) -> subprocess.Popen[bytes]:
    env = _fresh_env(
        root,
        GRAFT_DATABASE_URL=f"sqlite:///{root / 'graft.db'}",
        GRAFT_STORAGE_DIR=str(root / "blobs"),
        GRAFT_DEVICE="cpu",
        **extra,
    )
    with (root / "serve.log").open("ab") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, root / "serve.log")
    except RuntimeError:
        if process.poll() is None:
            _stop(process)
        raise
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    # make runs graft as a child: signal the whole group it leads.
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.fixture(scope="module")
def make_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("make") is None:
        require_part("make", "not on PATH")
    root = tmp_path_factory.mktemp("readme-serve")
    port = free_port()
    # `-o` (treat the install stamps as up to date): the set-up already ran; the test must not
    # reinstall the venv under another Python when pyproject.toml is newer than the stamps.
    process = _serve(
        ["make", "-o", ".venv/.graft-installed", "-o", ".venv/.graft-runtime", "serve",
         f"PORT={port}"],
        root, port,
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    _stop(process)


def test_the_walkthrough_runs_verbatim(make_serve: str, tmp_path: Path) -> None:
    # The walkthrough runs in the repository's folder; here, a folder that looks like it.
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", walkthrough()],
        cwd=tmp_path,
        env=_fresh_env(tmp_path, URL=make_serve),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "report.json").read_text())
    s = report["summary"]
    assert (s["loaded"], s["kept"], s["dropped"]) == (7, 2, 2)
    assert (tmp_path / "converted.safetensors").stat().st_size > 0
    assert "graft report: OK" in done.stdout
    assert '"schema": "graft.manifest/v1"' in done.stdout.replace('":"', '": "')


def test_the_wait_loop_fails_on_a_failed_job(make_serve: str, tmp_path: Path) -> None:
    """The same loop, on a job the recipe's policy refuses: non-zero, not forever."""
    script = walkthrough()
    # Everything up to the wait, with a recipe that cannot succeed (strict, a head dropped).
    head = script.split('wait_job "$JOB"', 1)[0]
    head = head.replace('"drop": ["3.*"]', '"drop": ["3.*"], "strict": true')
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", head + 'wait_job "$JOB"\necho unreachable'],
        cwd=tmp_path,
        env=_fresh_env(tmp_path, URL=make_serve),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1
    assert "unreachable" not in done.stdout
    assert '"type":"conversion-refused"' in done.stderr


def test_graft_port_sets_the_port(tmp_path: Path) -> None:
    port = free_port()
    process = _serve(
        [str(REPO / ".venv" / "bin" / "graft"), "serve"], tmp_path, port, GRAFT_PORT=str(port),
        GRAFT_WORKERS="0",
    )  # fmt: skip
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").json() == {"status": "ok"}
    finally:
        _stop(process)
