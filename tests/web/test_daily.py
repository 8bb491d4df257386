"""The web app as a daily user sees it (issue 26, items 14 to 17): names instead of ids, the job
page's recipe and sources, YAML recipes and grouped plans in the form, pipelines, webhook
deliveries, the checkpoint page's jobs, and the layout on a phone and in dark mode."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import yaml

from tests.e2e.conftest import Server
from tests.e2e.helpers import net, saved
from tests.web.conftest import Watched, screenshot
from tests.webhook_receiver import webhook_receiver

pytestmark = pytest.mark.e2e

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SOURCE_NAME = "mobilenet_v2-b0353104.pth"
RECIPE_YAML = "# keep the target's head\nversion: 1\ndrop:\n  - '3.*'\nfreeze: ['*']\n"
RECIPE = {"version": 1, "drop": ["3.*"], "freeze": ["*"]}


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """This module's server: webhooks to 127.0.0.1 that give up after a second, and an MLflow
    address (never contacted) so that pipelines can be stored."""
    srv = Server(
        tmp_path_factory.mktemp("daily"),
        GRAFT_WORKERS="1",
        GRAFT_OUTBOUND_ALLOW="127.0.0.1:*",
        GRAFT_WEBHOOK_SECRET=SECRET,
        GRAFT_WEBHOOK_BACKOFF_SECONDS="0.2",
        GRAFT_WEBHOOK_POLL_SECONDS="0.1",
        GRAFT_WEBHOOK_MAX_AGE_SECONDS="1",
        GRAFT_MLFLOW_TRACKING_URI="http://127.0.0.1:9",
    )
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def seeded(web_server: Server) -> dict[str, Any]:
    """A named source, a template target, and a finished job with a recipe."""
    with web_server.client() as client:
        src = client.post(
            "/v1/checkpoints", params={"filename": SOURCE_NAME}, content=saved(net(0, 10))
        ).json()
        tgt = client.post(
            "/v1/checkpoints", params={"filename": "target.pth"}, content=saved(net(1, 5))
        ).json()
        job = client.post(
            "/v1/jobs",
            json={"source": src["id"], "target": {"checkpoint": tgt["id"]},
                  "recipe_text": RECIPE_YAML},
        ).json()  # fmt: skip
        job = web_server.wait(client, job["id"])
        assert job["status"] == "succeeded", job
        arch = client.post(
            "/v1/jobs",
            json={"source": src["id"], "dry_run": True,
                  "target": {"architecture": "graft_mobilenet", "kwargs": {"num_classes": 10}}},
        ).json()  # fmt: skip
        arch = web_server.wait(client, arch["id"])
        groups = client.get(f"/v1/jobs/{job['id']}/report", params={"format": "groups"}).json()
        manifest = client.get(f"/v1/jobs/{job['id']}/manifest").json()
    return {"source": src, "target": tgt, "job": job, "arch": arch, "groups": groups,
            "manifest": manifest}  # fmt: skip


def test_the_job_document_has_recipe_duration_and_coverage(seeded: dict[str, Any]) -> None:
    job = seeded["job"]
    assert job["recipe"] == RECIPE  # parsed from the YAML text, server-side
    assert (
        job["duration_seconds"] == pytest.approx(job["timings"]["run_s"])
        and job["duration_seconds"] > 0
    )
    assert job["coverage"]["tensors"] == 0.7778  # the report's 7 of 9, as it rounds
    assert 0 < job["coverage"]["elements"] < 1


def test_jobs_show_names_and_downloads_are_named(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    page = watched.page
    job, arch, src = seeded["job"], seeded["arch"], seeded["source"]
    page.goto("/")
    row = page.locator(f"tr[data-job='{job['id']}']")
    row.wait_for()
    source = row.locator("[data-col='source']")
    assert source.locator(".name").inner_text() == SOURCE_NAME
    assert source.locator(".name").get_attribute("title") == src["id"]
    assert source.locator("[data-copy]").get_attribute("data-copy") == src["id"]
    assert src["id"][:8] not in source.inner_text()
    assert row.locator("[data-col='target'] .name").inner_text() == "target.pth"
    arch_target = page.locator(f"tr[data-job='{arch['id']}'] [data-col='target']")
    assert arch_target.inner_text() == "graft_mobilenet(num_classes=10)"
    screenshot(page, "jobs-named")
    page.goto(f"/#/jobs/{job['id']}")
    page.locator("#summary").wait_for()
    assert page.locator("#job-source .name").inner_text() == SOURCE_NAME
    assert page.locator("#job-target .name").inner_text() == "target.pth"
    expected = "mobilenet_v2-b0353104.target.safetensors"
    with page.expect_download() as info:
        page.click("[data-download='weights']")
    assert info.value.suggested_filename == expected
    with web_server.client() as client:
        weights = client.get(f"/v1/jobs/{job['id']}/weights")
        link = client.post("/v1/links", json={"job": job["id"], "artifact": "report"}).json()
        report = client.get(link["url"])
    disposition = weights.headers["content-disposition"]
    assert disposition in (
        f'attachment; filename="{expected}"',
        f"attachment; filename*=utf-8''{expected}",
    )
    assert link["filename"] == "mobilenet_v2-b0353104.target.report.json"
    assert f'filename="{link["filename"]}"' in report.headers["content-disposition"]


def test_job_page_shows_sources_recipe_and_grouped_frozen_keys(
    watched: Watched, seeded: dict[str, Any]
) -> None:
    page = watched.page
    job, groups, manifest = seeded["job"], seeded["groups"], seeded["manifest"]
    page.goto(f"/#/jobs/{job['id']}")
    page.locator("#summary").wait_for()
    rows = page.locator("#entries tbody tr")
    loaded = [i for i, g in enumerate(groups["entries"]) if g["status"] == "loaded"]
    assert loaded
    for i in loaded:  # the same key name: the From column says which, never blank
        g = groups["entries"][i]
        shown = rows.nth(i).locator("[data-col='from']").inner_text()
        assert shown == (", ".join(g["sources"]) or g["pattern"]), g
    assert json.loads(page.locator("#recipe-used pre").inner_text()) == RECIPE
    frozen = page.locator("#frozen li")
    assert sorted(manifest["frozen"]) and frozen.count() < len(manifest["frozen"])
    patterns = [frozen.nth(i).inner_text().split(" (")[0] for i in range(frozen.count())]
    assert patterns == [
        g["pattern"] for g in groups["entries"] if set(g["keys"]) <= set(manifest["frozen"])
    ]
    page.locator("#recipe-used").scroll_into_view_if_needed()
    screenshot(page, "job-recipe")


def test_job_list_has_duration_and_coverage(watched: Watched, seeded: dict[str, Any]) -> None:
    page = watched.page
    job = seeded["job"]
    page.goto("/")
    row = page.locator(f"tr[data-job='{job['id']}']")
    row.wait_for()
    heads = page.locator("#jobs-table thead th").all_inner_texts()
    assert "Duration" in heads and "Coverage" in heads
    assert row.locator("[data-col='coverage']").inner_text() == "77.78%"
    assert row.locator("[data-col='duration']").inner_text() == f"{job['duration_seconds']:.1f} s"


def test_form_takes_yaml_keeps_it_and_plans_grouped(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    page = watched.page
    src, tgt = seeded["source"], seeded["target"]
    page.goto("/#/new")
    page.locator(f"#source option[value='{src['id']}']").wait_for(state="attached")
    page.select_option("#source", src["id"])
    page.select_option("#target-checkpoint", tgt["id"])
    page.fill("#recipe", RECIPE_YAML)
    page.locator("#rule-outline li[data-rule='drop[0]']").wait_for()
    page.locator("#recipe-status", has_text="valid recipe").wait_for()
    page.click("#plan-button")
    page.locator("#plan-counts").wait_for()
    with web_server.client() as client:
        plan = client.post(
            "/v1/plans",
            params={"groups": "true"},
            json={
                "source": src["id"],
                "target": {"checkpoint": tgt["id"]},
                "recipe_text": RECIPE_YAML,
            },
        ).json()
    rows = page.locator("#plan-groups tbody tr")
    assert rows.count() == len(plan["groups"]["entries"]) < len(plan["entries"])
    assert [rows.nth(i).locator("td.key").first.inner_text() for i in range(rows.count())] == [
        g["pattern"] for g in plan["groups"]["entries"]
    ]
    assert page.locator("#plan-keys").get_attribute("open") is None  # every key: one click away
    assert page.input_value("#recipe") == RECIPE_YAML  # never reformatted
    screenshot(page, "plan-grouped")
    page.reload()  # what the user typed survives a reload of the tab
    page.locator("#recipe-status", has_text="valid recipe").wait_for()
    assert page.input_value("#recipe") == RECIPE_YAML
    page.fill("#recipe", "version: 1\ndrop: [\n")
    watched.allowed.append("status of 422")
    page.locator("#recipe-error", has_text="not YAML or JSON").wait_for()


def test_the_kwargs_box_shows_valid_keys_and_defaults(watched: Watched, web_server: Server) -> None:
    page = watched.page
    with web_server.client() as client:
        archs = {a["name"]: a for a in client.get("/v1/architectures").json()["data"]}
    page.goto("/#/new")
    page.check("input[name=target-kind][value=architecture]")
    page.locator("#target-architecture option[value='graft_mobilenet']").wait_for(state="attached")
    page.select_option("#target-architecture", "graft_mobilenet")
    help_ = page.locator("#kwargs-help")
    kwargs = archs["graft_mobilenet"]["kwargs"]
    assert help_.locator("[data-kwarg]").all_inner_texts() == list(kwargs)
    assert f"num_classes (default {kwargs['num_classes']['default']}, int)" in help_.inner_text()


def test_suggest_a_recipe_fills_the_editor(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    src, tgt = seeded["source"], seeded["target"]
    body = {"source": src["id"], "target": {"checkpoint": tgt["id"]}}
    with web_server.client() as client:
        answer = client.post("/v1/align", json=body)
    assert answer.status_code == 200, answer.text
    page = watched.page
    page.goto("/#/new")
    page.locator(f"#source option[value='{src['id']}']").wait_for(state="attached")
    page.select_option("#source", src["id"])
    page.select_option("#target-checkpoint", tgt["id"])
    page.fill("#recipe", "")
    page.click("#suggest-button")
    page.locator("#suggest-result").wait_for()
    assert yaml.safe_load(page.input_value("#recipe")) == answer.json()["recipe"]


def test_pipelines_are_listed_created_and_show_their_runs(watched: Watched) -> None:
    page = watched.page
    page.goto("/#/pipelines")
    page.locator("#no-pipelines").wait_for()
    page.fill("#pipeline-spec", "name: nightly\ntrigger: {model: resnet-src}\n"
              "target: {architecture: graft_mobilenet, kwargs: {num_classes: 10}}\n")  # fmt: skip
    page.click("#pipeline-create")
    page.locator("tr[data-pipeline='nightly']").wait_for()
    assert "resnet-src" in page.locator("tr[data-pipeline='nightly']").inner_text()
    screenshot(page, "pipelines")
    page.click("tr[data-pipeline='nightly'] a")
    page.locator("#pipeline-runs").wait_for()
    assert page.locator("#pipeline").inner_text().count("graft_mobilenet") == 1
    assert "No runs yet" in page.locator("#pipeline-runs").inner_text()


def test_a_failed_webhook_is_retried_from_its_page(
    watched: Watched, seeded: dict[str, Any], web_server: Server
) -> None:
    src, tgt = seeded["source"], seeded["target"]
    with webhook_receiver() as receiver, web_server.client() as client:
        receiver.statuses = [500] * 1000
        job = client.post(
            "/v1/jobs",
            json={"source": src["id"], "target": {"checkpoint": tgt["id"]},
                  "callback": {"url": receiver.url, "events": ["succeeded"]}},
        ).json()  # fmt: skip
        web_server.wait(client, job["id"])
        receiver.wait(2)  # tried, and retried: then the outbox gives up (max age 1 s)
        deadline = time.monotonic() + 30
        delivery = client.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"][0]
        while delivery["state"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
            delivery = client.get(f"/v1/jobs/{job['id']}/deliveries").json()["data"][0]
        assert delivery["state"] == "failed"
        tries = len(delivery["attempts"])
        receiver.statuses = []  # the receiver is back
        page = watched.page
        page.goto(f"/#/jobs/{job['id']}")
        page.click("#deliveries-link")
        row = page.locator(f"tr[data-delivery='{delivery['id']}']")
        row.wait_for()
        assert row.get_attribute("data-state") == "failed"
        assert row.locator("ol.attempts li").count() == tries
        page.click(f"[data-retry='{delivery['id']}']")
        page.locator(f"tr[data-delivery='{delivery['id']}'][data-state='delivered']").wait_for()
        got = receiver.wait(tries + 1)[-1]
    assert (got.status, got.headers["webhook-id"]) == (204, delivery["id"])


def test_checkpoint_page_lists_the_jobs_that_used_it(
    watched: Watched, seeded: dict[str, Any]
) -> None:
    page = watched.page
    src = seeded["source"]
    page.goto(f"/#/checkpoints/{src['id']}")
    page.locator("#checkpoint-jobs table").wait_for()
    assert page.locator("h1").inner_text().startswith(f"Checkpoint {SOURCE_NAME}")
    shown = page.locator("#checkpoint-jobs tr[data-job]")
    ids = {shown.nth(i).get_attribute("data-job") for i in range(shown.count())}
    assert {seeded["job"]["id"], seeded["arch"]["id"]} <= ids


def test_docs_link_back_to_the_app(watched: Watched) -> None:
    page = watched.page
    page.goto("/docs")
    page.locator(".swagger-ui .title", has_text="Graft").wait_for()
    page.click("#back-to-app")
    page.locator("#jobs-table, main p.muted").first.wait_for()
    assert httpx.URL(page.url).path == "/"


@pytest.mark.parametrize("width", [1280, 390])
def test_pages_fit_the_window_in_dark_mode_too(
    browser: Any, web_server: Server, seeded: dict[str, Any], width: int
) -> None:
    context = browser.new_context(
        base_url=web_server.url, viewport={"width": width, "height": 900}, color_scheme="dark"
    )
    page = context.new_page()
    w = Watched(page, web_server)
    try:
        for route, ready in [("/", "#jobs-table"), (f"/#/jobs/{seeded['job']['id']}", "#summary"),
                             ("/#/new", "#new-form"), ("/#/pipelines", "#pipeline-form"),
                             (f"/#/checkpoints/{seeded['source']['id']}", "#inspect")]:  # fmt: skip
            page.goto(route)
            page.locator(ready).wait_for()
            overflow = page.evaluate("document.documentElement.scrollWidth")
            assert overflow <= width, (route, overflow)
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == "rgb(21, 23, 26)"
        if width < 500:
            page.goto(f"/#/jobs/{seeded['job']['id']}")
            page.locator("#summary").wait_for()
            screenshot(page, "job-phone-dark")
    finally:
        context.close()
    w.check()
