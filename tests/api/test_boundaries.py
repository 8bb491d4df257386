"""The API process never imports torch (so it can never unpickle an upload)."""

from __future__ import annotations

import subprocess
import sys


def test_api_process_does_not_import_torch() -> None:
    code = (
        "import sys, app.api.main, app.services.jobs.service as j;"
        "j.validate_recipe({'version': 1});"
        "heavy = ('torch', 'safetensors', 'app.engine.readers');"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
