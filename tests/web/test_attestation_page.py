"""The job page shows the job's attestation (SPEC §3.3): whether it attests this job's
weights, whether it is signed, and a download of it; a real browser, a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Server
from tests.e2e.helpers import net, saved
from tests.web.conftest import Watched

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def jobs(web_server: Server) -> dict[str, Any]:
    """A converted job and a dry run, made through the JSON API."""
    with web_server.client() as client:
        src = client.post(
            "/v1/checkpoints", params={"filename": "a.pth"}, content=saved(net(0, 10))
        ).json()
        done = {}
        for name, dry_run in (("converted", False), ("dry", True)):
            job = client.post(
                "/v1/jobs",
                json={"source": src["id"], "target": {"checkpoint": src["id"]}, "dry_run": dry_run},
            ).json()
            done[name] = web_server.wait(client, job["id"])
            assert done[name]["status"] == "succeeded"
        done["statement"] = client.get(f"/v1/jobs/{done['converted']['id']}/attestation").json()
        artifacts = client.get(f"/v1/jobs/{done['converted']['id']}/artifacts").json()["data"]
        done["weights_sha256"] = next(a["sha256"] for a in artifacts if a["name"] == "weights")
    return done


def test_the_job_page_checks_and_offers_the_attestation(
    watched: Watched, jobs: dict[str, Any]
) -> None:
    page = watched.page
    page.goto(f"/#/jobs/{jobs['converted']['id']}")
    section = page.locator("#attestation")
    section.wait_for()
    assert section.get_attribute("data-verified") == "true"
    assert page.locator("#attestation-check").inner_text() == (
        f"the statement attests these weights (sha256 {jobs['weights_sha256'][:16]}…)"
    )
    assert page.locator("#attestation-signature").inner_text() == (
        "unsigned (the server has no GRAFT_SIGNING_KEY)"
    )
    with page.expect_download() as info:
        page.click("[data-download='attestation']")
    assert json.loads(Path(info.value.path()).read_text()) == jobs["statement"]


def test_a_dry_run_has_no_attestation(watched: Watched, jobs: dict[str, Any]) -> None:
    page = watched.page
    page.goto(f"/#/jobs/{jobs['dry']['id']}")
    section = page.locator("#attestation")
    section.wait_for()
    assert section.inner_text() == "None: only the weights of a succeeded job are attested."
