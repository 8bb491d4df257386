"""The new-conversion form's upload is resumable (tus-js-client, vendored): a reload in the
middle of an upload, then the same file chosen again, resumes at the server's offset."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch

from tests.e2e.conftest import Server
from tests.web.conftest import Watched

PART = 8 * 1024 * 1024  # the form's part size (js/resumable.js)


def test_an_upload_resumes_after_a_reload(
    watched: Watched, web_server: Server, tmp_path: Path
) -> None:
    page = watched.page
    path = tmp_path / "big.pt"
    generator = torch.Generator().manual_seed(3)
    state = {"w": torch.randn(5_000_000, generator=generator), "b": torch.zeros(7)}
    torch.save(state, path)
    data = path.read_bytes()
    assert len(data) > 2 * PART

    held: list[Any] = []

    def hold_the_second_part(route: Any) -> None:
        if route.request.method == "PATCH" and route.request.headers["upload-offset"] != "0":
            held.append(route)  # never answered: the page is reloaded while it waits
            return
        route.continue_()

    page.route("**/v1/uploads/*", hold_the_second_part)
    page.goto("/#/new")
    page.locator("#source option").first.wait_for(state="attached")
    second = lambda r: r.method == "PATCH" and r.headers.get("upload-offset") == str(PART)  # noqa: E731
    with page.expect_request(second):
        page.set_input_files("#source-upload", str(path))
    page.locator("#upload-progress").wait_for()
    assert held and page.evaluate("Object.keys(localStorage).some(k => k.startsWith('tus::'))")
    page.unroute_all(behavior="ignoreErrors")

    page.reload()
    page.locator("#source option").first.wait_for(state="attached")
    page.set_input_files("#source-upload", str(path))
    done = page.get_by_text(re.compile(r"Uploaded big\.pt: 2 tensors\. Resumed at \d+ bytes\."))
    done.wait_for(timeout=60_000)
    # What the server kept: the first part at least (the held one may have gone on to the
    # server once released, and been cut by the reload: its bytes are kept too).
    resumed_at = int(re.findall(r"Resumed at (\d+)", done.inner_text())[0])
    assert PART <= resumed_at < len(data)
    chosen = page.eval_on_selector("#source", "s => s.options[s.selectedIndex].text")
    assert chosen.startswith("big.pt — 2 tensors")
    # Done: the browser forgets the upload's URL.
    assert not page.evaluate("Object.keys(localStorage).some(k => k.startsWith('tus::'))")
    source_id = page.eval_on_selector("#source", "s => s.value")
    with web_server.client() as client:
        record = client.get(f"/v1/checkpoints/{source_id}").json()
        tensors = client.get(f"/v1/checkpoints/{source_id}/tensors").json()["data"]
    assert record["sha256"] == hashlib.sha256(data).hexdigest()
    assert [(t["key"], t["shape"]) for t in tensors] == [("w", [5_000_000]), ("b", [7])]
