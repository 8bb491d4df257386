"""One real server per module: the README walkthrough, hostile uploads, concurrency."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load

from tests.e2e.conftest import REPO, Server
from tests.e2e.helpers import net, saved
from tests.schemas import assert_valid

pytestmark = pytest.mark.e2e


def _readme_walkthrough() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Service", 1)[1]
    blocks = re.findall(r"```sh\n(.*?)```", section, flags=re.S)
    return next(b for b in blocks if "URL=" in b)


def test_readme_walkthrough_works_as_written(server: Server, tmp_path: Path) -> None:
    script = _readme_walkthrough().replace("http://127.0.0.1:8000", server.url)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    # The walkthrough runs in the repository's folder and calls .venv/bin/python by path
    # (tests/test_readme_walkthrough.py runs it in a fresh shell with `make serve`).
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)
    run = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr + run.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    summary = report["summary"]
    assert (summary["loaded"], summary["kept"], summary["dropped"]) == (7, 2, 2)
    weights = load((tmp_path / "converted.safetensors").read_bytes())
    pretrained = torch.load(tmp_path / "pretrained.pth", weights_only=True)
    target = torch.load(tmp_path / "target.pth", weights_only=True)
    for key in target:
        expected = target[key] if key.startswith("3.") else pretrained[key]
        assert torch.equal(weights[key], expected), key
    assert "graft report: OK" in run.stdout


class _Evil:
    def __init__(self, canary: Path) -> None:
        self.canary = canary

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.canary}",)


def test_hostile_uploads_are_refused_and_nothing_is_stored(server: Server, tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    # A torch.save archive whose pickle calls os.system, and a bare pickle doing the same.
    buf = io.BytesIO()
    torch.save({"state_dict": _Evil(canary)}, buf)
    cases = {
        "zip-pickle.pth": (buf.getvalue(), "unsafe-checkpoint"),
        "raw-pickle.pth": (pickle.dumps({"w": _Evil(canary)}), "unsafe-checkpoint"),
        "empty.pth": (b"", "unreadable-checkpoint"),
        "image.pth": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200), "unreadable-checkpoint"),
    }
    before = server.blobs()
    with server.client() as client:
        for name, (payload, problem) in cases.items():
            r = client.post("/v1/checkpoints", files={"file": (name, payload)})
            assert r.status_code == 422, (name, r.text)
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["type"] == problem, name
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
    assert not canary.exists()
    assert server.blobs() == before
    assert list((server.root / "blobs" / "tmp").iterdir()) == []


def test_sharded_upload_and_range(server: Server, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    state = net(5).state_dict()
    keys = list(state)
    parts = {
        "model-00001-of-00002.safetensors": keys[:4],
        "model-00002-of-00002.safetensors": keys[4:],
    }
    files = []
    weight_map = {}
    for name, part in parts.items():
        save_file({k: state[k].contiguous() for k in part}, tmp_path / name)
        weight_map.update(dict.fromkeys(part, name))
        files.append(("file", (name, (tmp_path / name).read_bytes())))
    index = {"metadata": {}, "weight_map": weight_map}
    files.append(("file", ("model.safetensors.index.json", json.dumps(index).encode())))
    with server.client() as client:
        r = client.post("/v1/checkpoints", files=files)
        assert r.status_code == 201, r.text
        body = r.json()
        assert (body["format"], body["tensors"], len(body["files"])) == ("hf-sharded", 9, 3)
        job = client.post(
            "/v1/jobs", json={"source": body["id"], "target": {"checkpoint": body["id"]}}
        ).json()
        assert server.wait(client, job["id"])["status"] == "succeeded"
        full = client.get(f"/v1/jobs/{job['id']}/weights")
        part = client.get(f"/v1/jobs/{job['id']}/weights", headers={"Range": "bytes=8-99"})
        assert part.status_code == 206
        assert part.content == full.content[8:100]
        assert part.headers["content-range"] == f"bytes 8-99/{len(full.content)}"


def test_refusals_and_warnings_reach_the_job(server: Server) -> None:
    """A typo'd rule fails the job as conversion-refused (the report still served, the rule
    named); with `unmatched: warn` it succeeds and GET /v1/jobs/{id} shows the warning."""
    with server.client() as client:
        source = client.post("/v1/checkpoints?filename=s.pth", content=saved(net(7))).json()
        target = client.post("/v1/checkpoints?filename=t.pth", content=saved(net(8, 5))).json()

        def job(recipe: dict[str, object]) -> dict[str, object]:
            body = {
                "source": source["id"],
                "target": {"checkpoint": target["id"]},
                "recipe": recipe,
            }
            created = client.post("/v1/jobs", json=body)
            assert created.status_code == 202, created.text
            return server.wait(client, created.json()["id"])

        typo = {"version": 1, "drop": ["3.*", "4.wieght"]}
        refused = job(typo)
        assert refused["status"] == "failed"
        assert refused["error"]["type"] == "conversion-refused"
        assert "unmatched: drop[1] (4.wieght) matched no key" in refused["error"]["message"]
        report = client.get(f"/v1/jobs/{refused['id']}/report").json()
        assert report["ok"] is False
        assert {r["rule"]: r["matched"] for r in report["rules"]} == {
            "drop[0]": 2, "drop[1]": 0, "init[0]": 9,
        }  # fmt: skip
        assert client.get(f"/v1/jobs/{refused['id']}/weights").status_code == 404

        warned = job({**typo, "unmatched": "warn"})
        assert warned["status"] == "succeeded"
        polled = client.get(f"/v1/jobs/{warned['id']}").json()
        assert polled["warnings"] == [
            "unmatched: drop[1] (4.wieght) matched no key; check it for a typo"
        ]


def test_twenty_concurrent_uploads_and_jobs(server: Server) -> None:
    template = saved(net(1000, classes=5))
    # Built up front: torch's global seed is not thread-safe.
    sources = [saved(net(i)) for i in range(20)]

    def one(i: int) -> tuple[int, dict, bytes]:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            source = client.post("/v1/checkpoints", files={"file": (f"m{i}.pth", sources[i])})
            target = client.post("/v1/checkpoints?filename=t.pth", content=template)
            # Same bytes as an earlier upload (another test of this module) answer 200 with it.
            assert source.status_code in (200, 201), source.text
            assert target.status_code in (200, 201), target.text
            job = client.post(
                "/v1/jobs",
                json={
                    "source": source.json()["id"],
                    "target": {"checkpoint": target.json()["id"]},
                    "recipe": {"version": 1, "drop": ["3.*"]},
                },
            )
            assert job.status_code == 202, job.text
            done = server.wait(client, job.json()["id"], timeout=150)
            weights = client.get(f"/v1/jobs/{done['id']}/weights").content
            report = client.get(f"/v1/jobs/{done['id']}/report").json()
            assert_valid("report", report)  # served by another process: checked here
            return i, {"job": done, "report": report}, weights

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(one, range(20)))
    template_state = net(1000, classes=5).state_dict()
    for i, outcome, weights in results:
        assert outcome["job"]["status"] == "succeeded", outcome["job"]
        summary = outcome["report"]["summary"]
        assert (summary["loaded"], summary["kept"], summary["dropped"]) == (7, 2, 2)
        converted = load(weights)
        source_state: dict[str, torch.Tensor] = net(i).state_dict()
        for key in template_state:
            expected = template_state[key] if key.startswith("3.") else source_state[key]
            assert torch.equal(converted[key], expected), (i, key)


def test_unknown_route_is_problem_json(server: Server) -> None:
    r = httpx.get(f"{server.url}/v1/nothing")
    assert r.status_code == 404
    assert r.json()["type"] == "not-found"
