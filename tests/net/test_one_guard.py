"""Every outgoing HTTP client is made by ``app.net.outbound`` (issue 12, item 10)."""

from __future__ import annotations

import re

from tests.fixtures import REPO_ROOT

APP = REPO_ROOT / "app"
# Constructing a client, or a one-shot request helper, anywhere but the guard.
_RAW_CLIENT = re.compile(
    r"\bhttpx\.(Client|AsyncClient|get|post|put|delete|request|stream)\(|\burllib\.request\b"
    r"|\burlopen\(|\bhttp\.client\b|\baiohttp\b|\brequests\.(get|post|Session)\b"
)


def test_no_module_outside_the_guard_opens_its_own_http_client() -> None:
    offenders = [
        f"{path.relative_to(APP.parent)}:{n}: {line.strip()}"
        for path in sorted(APP.rglob("*.py"))
        # app/client is the user's side: it talks to the Graft server the user names.
        if path.parent.name not in ("net", "client")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if _RAW_CLIENT.search(line)
    ]
    assert offenders == [], "use app.net.outbound.guarded_client:\n" + "\n".join(offenders)


def test_the_pattern_catches_a_raw_client() -> None:
    assert _RAW_CLIENT.search("    client = httpx.Client(timeout=5)")
    assert _RAW_CLIENT.search("urllib.request.urlopen(url)")
    assert not _RAW_CLIENT.search("client: httpx.Client,")
