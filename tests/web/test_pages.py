"""The web app in a real browser, checked against the JSON API it draws from."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from tests.e2e.conftest import REPO, Server
from tests.e2e.helpers import net, saved
from tests.web.conftest import Watched, screenshot

pytestmark = pytest.mark.e2e

RECIPE = {"version": 1, "drop": ["3.*"]}


@pytest.fixture(scope="module")
def seeded(web_server: Server) -> dict[str, Any]:
    """Two checkpoints and one finished job, made through the JSON API."""
    with web_server.client() as client:
        src = client.post(
            "/v1/checkpoints", params={"filename": "pretrained.pth"}, content=saved(net(0, 10))
        ).json()
        tgt = client.post(
            "/v1/checkpoints", params={"filename": "target.pth"}, content=saved(net(1, 5))
        ).json()
        job = client.post(
            "/v1/jobs",
            json={"source": src["id"], "target": {"checkpoint": tgt["id"]}, "recipe": RECIPE},
        ).json()
        job = web_server.wait(client, job["id"])
        assert job["status"] == "succeeded"
        report = client.get(f"/v1/jobs/{job['id']}/report").json()
        groups = client.get(f"/v1/jobs/{job['id']}/report", params={"format": "groups"}).json()
    return {"source": src, "target": tgt, "job": job, "report": report, "groups": groups}


def test_job_list_shows_live_status_and_filters(watched: Watched, seeded: dict[str, Any]) -> None:
    page = watched.page
    job_id = seeded["job"]["id"]
    page.goto("/")
    row = page.locator(f"tr[data-job='{job_id}']")
    row.wait_for()
    assert row.locator(".badge").inner_text() == "succeeded"
    assert page.locator("#auth-state").inner_text() == "local mode (no keys)"
    screenshot(page, "jobs")
    page.select_option("#status-filter", "failed")
    page.wait_for_url("**/#/jobs?status=failed")
    page.get_by_text("No jobs yet.").wait_for()
    assert page.locator(f"tr[data-job='{job_id}']").count() == 0
    page.select_option("#status-filter", "succeeded")
    page.locator(f"tr[data-job='{job_id}']").wait_for()
    page.click(f"tr[data-job='{job_id}'] a")
    page.wait_for_url(f"**/#/jobs/{job_id}")


def test_job_page_matches_the_report(watched: Watched, seeded: dict[str, Any]) -> None:
    page = watched.page
    job_id, report, groups = seeded["job"]["id"], seeded["report"], seeded["groups"]
    page.goto(f"/#/jobs/{job_id}")
    page.locator("#summary").wait_for()
    summary = report["summary"]
    assert (summary["loaded"], summary["kept"], summary["dropped"]) == (7, 2, 2)
    for key in ("loaded", "kept", "used", "dropped", "unexpected", "mismatched"):
        card = page.locator(f"#summary [data-count='{key}'] .n")
        assert card.inner_text() == str(summary[key]), key
    assert page.locator("[data-coverage='tensors covered']").inner_text() == (
        f"{100 * summary['coverage']['tensors']:.2f}%".replace(".00%", "%")
    )
    rows = page.locator("#entries tbody tr")
    assert rows.count() == len(groups["entries"])
    assert [rows.nth(i).locator("td.key").first.inner_text() for i in range(rows.count())] == [
        g["pattern"] for g in groups["entries"]
    ]
    text = page.locator("#report").inner_text()
    assert "null" not in text and "[object" not in text
    screenshot(page, "job")
    # Filter by status: only the kept groups (the target's own head) remain.
    page.select_option("#entry-status", "kept")
    kept = [g for g in groups["entries"] if g["status"] == "kept"]
    assert rows.count() == len(kept) and kept
    assert {rows.nth(i).get_attribute("data-status") for i in range(rows.count())} == {"kept"}
    # Search: a key inside a group finds the group.
    page.select_option("#entry-status", "")
    page.fill("#entry-search", "1.running_var")
    assert rows.count() == 1
    assert "running_var" in rows.first.inner_text()
    page.fill("#entry-search", "no-such-key")
    assert rows.first.inner_text() == "Nothing to show."
    # Unused source keys with their reasons and rules.
    unused = page.locator("#unused tbody tr")
    assert unused.count() == len(groups["unused"])
    assert "dropped" in unused.first.inner_text() and "drop[0]" in unused.first.inner_text()
    assert (
        page.locator("#verification")
        .inner_text()
        .startswith(
            f"{report['verification']['equal']}/{report['verification']['checked']} tensors equal"
        )
    )
    # Downloads go through signed links: the file is the report the API serves.
    with page.expect_download() as info:
        page.click("[data-download='report']")
    path = info.value.path()
    assert json.loads(Path(path).read_text()) == report


def test_rules_with_no_match_are_highlighted(watched: Watched, seeded: dict[str, Any]) -> None:
    """The report's `rules` (SPEC 2.1, from the engine's rule accounting) as the page shows
    them: matched and applied. The browser is handed a report with every case at the network
    boundary; everything else is the live server's."""
    page = watched.page
    job_id = seeded["job"]["id"]
    rules = [
        {"rule": "drop[0]", "matched": 2, "applied": 2},
        {"rule": "rename[0]", "matched": 0, "applied": 0},
        {"rule": "init[0]", "matched": 314, "applied": 0},
    ]
    report = {**seeded["report"], "rules": rules}
    page.route(
        re.compile(rf".*/v1/jobs/{job_id}/report$"),
        lambda route: route.fulfill(json=report),
    )
    page.goto(f"/#/jobs/{job_id}")
    page.locator("#summary").wait_for()
    table = page.locator("#rules")
    table.wait_for()
    rows = table.locator("tbody tr")
    assert rows.count() == 3
    assert rows.nth(0).inner_text().split("\t")[:3] == ["drop[0]", "2", "2"]
    assert "unmatched" not in (rows.nth(0).get_attribute("class") or "")
    assert rows.nth(1).get_attribute("class") == "unmatched"
    assert "unmatched: this rule selected no key" in rows.nth(1).inner_text()
    assert rows.nth(2).inner_text().split("\t") == ["init[0]", "314", "0", "changed no key"]
    assert rows.nth(2).get_attribute("class") == "unapplied"


def test_checkpoint_page_is_the_grouped_inspect_view(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    page = watched.page
    source = seeded["source"]
    with web_server.client() as client:
        doc = client.get(f"/v1/checkpoints/{source['id']}/inspect", params={"groups": True}).json()
    assert doc["schema"] == "graft.inspect/v1" and doc["paths"] == ["pretrained.pth"]
    page.goto(f"/#/checkpoints/{source['id']}")
    page.locator("#inspect").wait_for()
    assert page.locator("[data-total='tensors']").inner_text() == str(doc["totals"]["tensors"])
    rows = page.locator("#inspect tbody tr")
    assert rows.count() == len(doc["groups"])
    assert rows.first.locator("td.key").inner_text() == doc["groups"][0]["pattern"]
    screenshot(page, "checkpoint")
    page.fill("#tensor-search", "running_mean")
    assert rows.count() == 1


def test_form_plans_then_runs_a_conversion(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    page = watched.page
    source, target = seeded["source"], seeded["target"]
    with web_server.client() as client:
        jobs_before = client.get("/v1/jobs").json()["count"]
    page.goto("/#/new")
    page.locator(f"#source option[value='{source['id']}']").wait_for(state="attached")
    page.select_option("#source", source["id"])
    page.select_option("#target-checkpoint", target["id"])
    page.fill("#recipe", json.dumps(RECIPE))
    page.locator("#recipe-status", has_text="valid recipe").wait_for()
    page.click("#plan-button")
    page.locator("#plan-counts").wait_for()
    counts = {
        k: page.locator(f"#plan-counts [data-count='{k}'] .n").inner_text()
        for k in ("loaded", "kept", "dropped")
    }
    assert counts == {"loaded": "7", "kept": "2", "dropped": "2"}
    page.click("#plan-keys summary")  # the plan is grouped; every key is one click away
    assert page.locator("#plan-keys tbody tr").count() == 9
    assert "null" not in page.locator("#plan").inner_text()
    screenshot(page, "new-conversion")
    with web_server.client() as client:  # a dry run never clutters the job list
        assert client.get("/v1/jobs").json()["count"] == jobs_before
    page.click("#submit-button")
    page.wait_for_url("**/#/jobs/*")
    job_id = page.url.rsplit("/", 1)[1]
    page.locator("#job-status .badge", has_text="succeeded").wait_for(timeout=90_000)
    page.locator("#summary").wait_for()
    with web_server.client() as client:
        job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded" and job["target"] == {"checkpoint": target["id"]}


def test_form_uploads_a_source_and_plans_into_an_architecture(
    watched: Watched, web_server: Server, tmp_path: Path
) -> None:
    page = watched.page
    path = tmp_path / "uploaded.pth"
    path.write_bytes(saved(net(7, 10)))
    page.goto("/#/new")
    page.locator("#source option").first.wait_for(state="attached")
    page.set_input_files("#source-upload", str(path))
    page.get_by_text("Uploaded uploaded.pth: 9 tensors.").wait_for()
    chosen = page.eval_on_selector("#source", "s => s.options[s.selectedIndex].text")
    assert chosen.startswith("uploaded.pth — 9 tensors")
    source_id = page.eval_on_selector("#source", "s => s.value")
    page.check("input[name=target-kind][value=architecture]")
    assert page.locator("#target-checkpoint").is_hidden()
    page.locator("#target-architecture option[value='graft_mobilenet']").wait_for(state="attached")
    page.select_option("#target-architecture", "graft_mobilenet")
    page.fill("#target-kwargs", '{"num_classes": 10}')
    page.fill("#recipe", "")
    page.click("#plan-button")
    page.locator("#plan-counts").wait_for(timeout=90_000)
    with web_server.client() as client:
        plan = client.post(
            "/v1/plans",
            json={"source": source_id,
                  "target": {"architecture": "graft_mobilenet", "kwargs": {"num_classes": 10}}},
        ).json()  # fmt: skip
    for key in ("loaded", "initialized", "unexpected"):
        shown = page.locator(f"#plan-counts [data-count='{key}'] .n").inner_text()
        assert shown == str(plan["summary"][key]), key
    assert plan["summary"]["initialized"] == plan["target"]["tensors"] > 0


def test_recipe_errors_show_at_the_rule_they_name(watched: Watched) -> None:
    page = watched.page
    watched.allowed.append("status of 422")  # the validation answer itself
    page.goto("/#/new")
    bad = {"version": 1, "rename": [{"prefix": "a.", "to": "b."}, {"regex": "(", "to": "x"}]}
    page.fill("#recipe", json.dumps(bad))
    item = page.locator("#rule-outline li[data-rule='rename[1]']")
    item.locator(".error").wait_for()
    assert "bad" in (item.get_attribute("class") or "")
    assert page.locator("#rule-outline li.bad").count() == 1
    shown = page.locator("#recipe-error").inner_text()
    assert shown.startswith("rename[1]: invalid regex '('") and shown.count("rename[1]") == 1


def test_a_10000_entry_plan_stays_responsive(
    watched: Watched, web_server: Server, tmp_path: Path
) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "wide.safetensors"
    save_file({f"k{i}": torch.full((1,), float(i)) for i in range(10_000)}, str(path))
    with web_server.client() as client:
        wide = client.post(
            "/v1/checkpoints", params={"filename": "wide.safetensors"}, content=path.read_bytes()
        ).json()
    page = watched.page
    page.goto(f"/#/new?source={wide['id']}")
    page.locator(f"#source option[value='{wide['id']}'][selected]").wait_for(state="attached")
    page.select_option("#target-checkpoint", wide["id"])
    page.click("#plan-button")
    page.locator("#plan-counts").wait_for()
    assert page.locator("#plan-counts [data-count='loaded'] .n").inner_text() == "10000"
    assert page.locator("#plan-groups tbody tr").count() == 1  # k{0..9999}: one group
    page.click("#plan-keys summary")
    rows = page.locator("#plan-keys tbody tr")
    assert rows.count() == 100  # paged: the DOM never holds 10,000 rows
    assert (
        page.locator("#plan-keys [data-testid='page']").inner_text() == "page 1 of 100 (10000 rows)"
    )
    started = time.monotonic()
    page.click("#plan-keys .pager button:has-text('Next')")
    page.locator("#plan-keys [data-testid='page']", has_text="page 2 of 100").wait_for()
    assert time.monotonic() - started < 2.0
    with web_server.client() as client:
        plan = client.post(
            "/v1/plans", json={"source": wide["id"], "target": {"checkpoint": wide["id"]}}
        ).json()
    assert rows.first.locator("td.key").first.inner_text() == plan["entries"][100]["target"]


def test_docs_load_swagger_ui_from_this_server(watched: Watched) -> None:
    page = watched.page
    page.goto("/docs")
    page.locator(".swagger-ui .title", has_text="Graft").wait_for()
    page.locator("#operations-plans-create_plan_v1_plans_post").wait_for()


def test_with_keys_the_pages_ask_once_and_download_through_links(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    """Last in the module: creating a key turns keys on for good."""
    created = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", "keys", "create", "--json",
         "--scope", "write"],
        cwd=REPO, env=web_server.env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    token = json.loads(created.stdout)["token"]
    assert httpx.get(f"{web_server.url}/v1/auth").json()["mode"] == "keys"
    page = watched.page
    watched.allowed.append("status of 401")  # the refused key's answer
    page.goto("/")
    page.locator("#key-form").wait_for()
    page.fill("#api-key", "graft_0123456789abcdef_" + "x" * 40)
    page.click("#key-form button")
    page.get_by_text("That key was refused (unknown or revoked). Enter another.").wait_for()
    assert page.evaluate("sessionStorage.getItem('graft.key')") is None
    page.fill("#api-key", token)
    page.click("#key-form button")
    job_id = seeded["job"]["id"]
    page.locator(f"tr[data-job='{job_id}']").wait_for()
    assert page.evaluate("sessionStorage.getItem('graft.key')") == token
    assert page.context.cookies() == []
    page.goto(f"/#/jobs/{job_id}")  # same tab: no second prompt
    page.locator("#summary").wait_for()
    with page.expect_download() as info:
        page.click("[data-download='weights']")
    download = info.value
    assert "/v1/links/" in download.url
    with web_server.client() as client:
        weights = client.get(
            f"/v1/jobs/{job_id}/weights", headers={"Authorization": f"Bearer {token}"}
        ).content
    assert Path(download.path()).read_bytes() == weights
    # The link itself needs no key, for GET and HEAD alike; the API without one is refused.
    head = httpx.head(download.url)
    assert (head.status_code, int(head.headers["content-length"])) == (200, len(weights))
    assert httpx.get(download.url).content == weights
    assert httpx.get(f"{web_server.url}/v1/jobs/{job_id}/weights").status_code == 401
