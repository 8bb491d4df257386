"""Warm restart of ``graft serve``: seconds to ``/readyz``, and the first job after it.

For each tree, a data folder is set up once (first start, migrations, then stopped), then
``graft serve`` is restarted on it ``--rounds`` times, the trees in turn, with the settings
``make serve`` uses (``GRAFT_DEVICE`` and ``GRAFT_WORKERS`` as configured, default ``auto``
and the default worker count). Each restart prints the seconds from the process start to the
first 200 from ``/readyz``, then the seconds of one small conversion submitted right then
(its first job: is the worker still warm?). With ``--against REV`` the same is measured for
git revision ``REV`` (exported to a temporary folder) in the same session::

    .venv/bin/python bench/serve_ready.py --against 0b90067 --rounds 5
    .venv/bin/python bench/serve_ready.py --against 0b90067 --rev HEAD   # both committed
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.trees import export_tree, free_port, saved_net  # noqa: E402
from bench.trees import load_average as _load  # noqa: E402


class Tree:
    """One source tree and its data folder."""

    def __init__(self, label: str, tree: Path) -> None:
        self.label, self.tree = label, tree
        self.root = Path(tempfile.mkdtemp(prefix="graft-serve-ready-"))
        self.ready: list[float] = []
        self.first: list[float] = []
        self.ids: tuple[str, str] | None = None

    def start(self) -> tuple[subprocess.Popen[bytes], str, float]:
        port = free_port()
        env = {
            **os.environ,
            "PYTHONPATH": str(self.tree),
            "GRAFT_DATABASE_URL": f"sqlite:///{self.root / 'graft.db'}",
            "GRAFT_STORAGE_DIR": str(self.root / "blobs"),
            "GRAFT_POLL_SECONDS": "0.05",
        }
        started = time.monotonic()
        with (self.root / "serve.log").open("ab") as log:
            server = subprocess.Popen(
                [sys.executable, "-c", "from app.cli import main; main()", "serve",
                 "--port", str(port)],
                cwd=self.tree, env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        while True:
            if server.poll() is not None:
                raise SystemExit(f"{self.label}: graft serve exited; see {self.root}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    return server, url, time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.02)

    def restart(self, *, record: bool) -> None:
        server, url, ready = self.start()
        try:
            with httpx.Client(base_url=url, timeout=120) as client:
                if self.ids is None:
                    up = [
                        client.post(f"/v1/checkpoints?filename={n}.pth", content=saved_net(c))
                        for n, c in (("a", 10), ("b", 5))
                    ]
                    self.ids = (up[0].json()["id"], up[1].json()["id"])
                t0 = time.monotonic()
                body = {"source": self.ids[0], "target": {"checkpoint": self.ids[1]},
                        "recipe": {"drop": ["3.*"]}}  # fmt: skip
                job = client.post("/v1/jobs", json=body).json()
                while job["status"] not in ("succeeded", "failed", "cancelled"):
                    time.sleep(0.02)
                    job = client.get(f"/v1/jobs/{job['id']}").json()
                first = time.monotonic() - t0
                assert job["status"] == "succeeded", job
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
        if record:
            self.ready.append(ready)
            self.first.append(first)
            print(f"  {self.label}: ready {ready:.2f} s, first job {first:.2f} s", flush=True)


def _export(rev: str) -> Path:
    """Revision ``rev`` of this repository, exported to a temporary folder."""
    return export_tree(rev, "graft-serve-ready-tree-")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git revision to measure too, as a baseline")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rev", help="measure this git revision rather than the working tree")
    args = parser.parse_args()
    exported: list[Path] = []
    trees = [Tree("this tree", REPO)]
    if args.rev:
        exported.append(_export(args.rev))
        trees = [Tree(f"this tree at {args.rev}", exported[-1])]
    if args.against:
        exported.append(_export(args.against))
        trees.insert(0, Tree(f"baseline {args.against}", exported[-1]))
    print(f"setting up ({_load()})", flush=True)
    for tree in trees:
        tree.restart(record=False)  # first start: migrations, uploads, caches
    for n in range(args.rounds):
        print(f"round {n + 1} ({_load()})", flush=True)
        for tree in trees:
            tree.restart(record=True)
    for tree in trees:
        print(
            f"{tree.label}: ready median {statistics.median(tree.ready):.2f} s "
            f"(min {min(tree.ready):.2f}), first job median {statistics.median(tree.first):.2f} s"
        )
        shutil.rmtree(tree.root, ignore_errors=True)
    for folder in exported:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
