"""The README's "Clients, webhooks, retries and live progress" example, run as written
against a real server (only the URL and the receiver's port are changed)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.conftest import REPO, Server, free_port
from tests.e2e.helpers import net

pytestmark = pytest.mark.e2e


def _example() -> str:
    section = (REPO / "README.md").read_text().split("## Clients, webhooks, retries", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return next(b for b in blocks if "URL=" in b)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path / "srv", GRAFT_OUTBOUND_ALLOW="127.0.0.1:*")
    srv.root.mkdir()
    srv.start()
    yield srv
    srv.stop()


def test_the_readme_example_works_as_written(server: Server, tmp_path: Path) -> None:
    torch.manual_seed(0)
    torch.save(net(0, classes=10).state_dict(), tmp_path / "pretrained.pth")
    torch.save(net(1, classes=5).state_dict(), tmp_path / "target.pth")
    port = str(free_port())
    script = _example().replace("http://127.0.0.1:8000", server.url).replace("8099", port)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # The README calls `.venv/bin/graft` from the repository's root: the same venv here.
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    out = run.stdout
    assert "retry returned the same job" in out
    assert "idempotency-conflict" in out
    assert '"status":"queued"\n"status":"running"\n"status":"succeeded"' in out
    webhook = (tmp_path / "webhook.log").read_text()
    assert webhook.startswith("verified msg_") and '"type":"job.succeeded"' in webhook
    assert '"state":"delivered"' in out and '"status_code":204' in out
    assert re.search(r"job [0-9a-f]{32}: succeeded", out)
    submitted = load_file(tmp_path / "submitted.safetensors")
    pretrained = torch.load(tmp_path / "pretrained.pth", weights_only=True)
    target = torch.load(tmp_path / "target.pth", weights_only=True)
    for key, value in submitted.items():
        expected = target[key] if key.startswith("3.") else pretrained[key]
        assert torch.equal(value, expected), key
    # graft submit found both files by sha256: each was uploaded once, by curl.
    assert server.log.read_text().count("POST /v1/checkpoints") == 2
