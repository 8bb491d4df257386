"""A real Chromium (Debian's, driven by Playwright) against a real ``graft serve``.

Playwright cannot download browsers here, so it launches ``/usr/bin/chromium``
(``GRAFT_TEST_CHROMIUM`` to use another); ``.ci/run`` installs it with apt-get when it is
missing. Every page a test opens fails the test on a console error, an uncaught exception,
or a request to any host but the server's.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import Server
from tests.fixtures import REPO_ROOT
from tests.parts import import_part, require_part

CHROMIUM = os.environ.get("GRAFT_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = REPO_ROOT / "docs" / "screenshots"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def web_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One live server per module."""
    srv = Server(tmp_path_factory.mktemp("web"), GRAFT_WORKERS="1")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api: Any = import_part("playwright.sync_api", "Playwright", "make setup installs it")
    if not (Path(CHROMIUM).exists() or shutil.which(CHROMIUM)):
        require_part("Chromium", f"none at {CHROMIUM}: `make chromium` installs Debian's")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


class Watched:
    """A page whose console errors and foreign requests are collected, then asserted on."""

    def __init__(self, page: Any, server: Server) -> None:
        self.page = page
        self.origin = urlsplit(server.url).netloc
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.allowed: list[str] = []  # substrings of console errors a test expects
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.errors.append(f"uncaught: {exc}"))
        page.on("request", self._request)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"{message.text} @ {message.location.get('url')}")

    def _request(self, request: Any) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob"):
            return
        if parts.netloc != self.origin:
            self.foreign.append(request.url)

    def check(self) -> None:
        unexpected = [e for e in self.errors if not any(a in e for a in self.allowed)]
        assert unexpected == [], f"console errors: {unexpected}"
        assert self.foreign == [], f"requests to other hosts: {self.foreign}"


@pytest.fixture
def watched(browser: Any, web_server: Server) -> Iterator[Watched]:
    context = browser.new_context(
        base_url=web_server.url, viewport={"width": 1280, "height": 900}, accept_downloads=True
    )
    page = context.new_page()
    page.set_default_timeout(30_000)
    w = Watched(page, web_server)
    yield w
    context.close()
    w.check()


def screenshot(page: Any, name: str) -> None:
    """Save a screenshot the README embeds (committed: they show the pages as they are)."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
