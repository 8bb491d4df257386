"""``make serve`` installs the runtime only; ``make test``'s set-up adds the dev toolchain."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.fixtures import REPO_ROOT
from tests.parts import require_part


def _make(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("make") is None:
        require_part("make", "not on PATH")
    return subprocess.run(
        # Under `make test` this make is a sub-make: no "Entering/Leaving directory" lines.
        ["make", "--no-print-directory", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


def test_serve_installs_only_the_runtime_and_test_adds_the_rest(tmp_path: Path) -> None:
    venv = tmp_path / "venv"

    serve = _make("-n", "serve", f"VENV={venv}").stdout
    setup = _make("-n", "setup", f"VENV={venv}").stdout

    assert f"{venv}/bin/python -m pip install -q -e . torch==2.13.0" in serve
    assert "[dev]" not in serve and "requirements-fixtures" not in serve
    assert serve.rstrip().endswith(f"{venv}/bin/graft serve")
    assert f"{venv}/bin/python -m pip install -q -e '.[dev]' torch==2.13.0" in setup
    assert "requirements-fixtures.txt" in setup


def test_a_full_set_up_serves_without_installing_anything(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    venv.mkdir()
    (venv / ".graft-installed").touch()  # newer than pyproject.toml: `make test`'s set-up ran

    _make("setup-runtime", f"VENV={venv}")  # would fail here if it tried to install

    runtime, full = venv / ".graft-runtime", venv / ".graft-installed"
    assert runtime.stat().st_mtime_ns == full.stat().st_mtime_ns  # and setup stays up to date
    assert _make("-q", "setup", f"VENV={venv}").returncode == 0
    assert sorted(p.name for p in venv.iterdir()) == [".graft-installed", ".graft-runtime"]


def test_the_deepspeed_venv_pins_the_cpu_torch_and_builds_no_ops(tmp_path: Path) -> None:
    venv = tmp_path / "ds"
    steps = _make("-n", "deepspeed-venv", f"DEEPSPEED_VENV={venv}").stdout
    assert f"{venv}/bin/python -m pip install -q torch==2.13.0" in steps
    assert (
        f"DS_BUILD_OPS=0 {venv}/bin/python -m pip install -q torch==2.13.0 deepspeed==0.19.8"
        in steps
    )
    assert "torch.version.cuda is not None" in steps  # a CUDA torch is refused
    test = _make("-n", "test", f"DEEPSPEED_VENV={venv}").stdout
    assert f"GRAFT_TEST_DEEPSPEED_VENV={venv}" in test
