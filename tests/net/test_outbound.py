"""The outgoing-request guard against real local HTTP(S) servers.

Only DNS is replaced (by an injected resolver) where a test needs a name to resolve somewhere
chosen; connections, redirects and TLS are real.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.net.outbound import (
    OutboundPolicy,
    OutboundRefusedError,
    address_refusal,
    guarded_async_client,
    guarded_client,
)
from tests.net.servers import Server, serve


@pytest.fixture
def server() -> Iterator[Server]:
    with serve() as s:
        yield s


@pytest.fixture
def other_server() -> Iterator[Server]:
    with serve() as s:
        yield s


def _policy(value: str, **kwargs: str) -> OutboundPolicy:
    return OutboundPolicy.from_setting(value, **kwargs)


def _resolver(table: dict[str, list[str]]):
    def resolve(host: str, port: int) -> list[str]:
        return table[host]

    return resolve


def test_listed_host_is_reached(server: Server) -> None:
    with guarded_client(_policy("127.0.0.1:*")) as client:
        response = client.get(f"http://127.0.0.1:{server.port}/")
    assert response.status_code == 200
    assert response.text == "ok"
    assert server.connections == 1


def test_unlisted_host_is_refused_before_any_connection(server: Server) -> None:
    with (
        guarded_client(_policy("example.org")) as client,
        pytest.raises(OutboundRefusedError, match="not in GRAFT_OUTBOUND_ALLOW") as info,
    ):
        client.get(f"http://127.0.0.1:{server.port}/")
    assert info.value.type == "outbound-refused"
    assert server.connections == 0


def test_name_resolving_to_loopback_is_refused_unless_listed_exactly(server: Server) -> None:
    # "*" admits any host, but only on global addresses: localhost resolves to loopback.
    with (
        guarded_client(_policy("*:*")) as client,
        pytest.raises(OutboundRefusedError, match=r"127\.0\.0\.1, a loopback address"),
    ):
        client.get(f"https://localhost:{server.port}/")
    assert server.connections == 0


def test_pattern_host_on_private_address_is_refused(server: Server) -> None:
    resolver = _resolver({"files.corp.test": ["10.1.2.3"]})
    with (
        guarded_client(_policy("*.corp.test"), resolver=resolver) as client,
        pytest.raises(OutboundRefusedError, match="private"),
    ):
        client.get("https://files.corp.test/x")


def test_one_bad_address_among_good_ones_refuses_the_connection(server: Server) -> None:
    # A rebinding resolver may hand out a public address and a loopback one together.
    resolver = _resolver({"cdn.example.com": ["93.184.216.34", "127.0.0.1"]})
    with (
        guarded_client(_policy("*.example.com:*"), resolver=resolver) as client,
        pytest.raises(OutboundRefusedError, match="loopback"),
    ):
        client.get(f"https://cdn.example.com:{server.port}/")
    assert server.connections == 0


def test_connects_to_the_checked_address_and_keeps_the_host_header(server: Server) -> None:
    # Named exactly, so a private address is allowed: the request reaches the address the
    # resolver gave (resolved once) while the Host header still names the host.
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return ["127.0.0.1"]

    with guarded_client(_policy("registry.internal:*"), resolver=resolve) as client:
        first = client.get(f"http://registry.internal:{server.port}/a")
        second = client.get(f"http://registry.internal:{server.port}/b")
    assert (first.status_code, second.status_code) == (200, 200)
    assert server.hosts == [f"registry.internal:{server.port}"] * 2
    assert calls == ["registry.internal"]  # one connection, kept alive, resolved once
    assert server.connections == 1


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("ftp://127.0.0.1/x", "refused ftp: URL"),
        ("file:///etc/passwd", "refused file: URL"),
        ("http://cdn.example.com/x", "plain http is allowed only to hosts listed exactly"),
    ],
)
def test_schemes(url: str, match: str) -> None:
    policy = _policy("127.0.0.1,*.example.com")
    with pytest.raises(OutboundRefusedError, match=match):
        policy.check_url(url)


def test_redirect_to_unlisted_host_is_refused(server: Server, other_server: Server) -> None:
    target = f"http://localhost:{other_server.port}/"
    with (
        guarded_client(_policy("127.0.0.1:*"), follow_redirects=True) as client,
        pytest.raises(OutboundRefusedError, match="'localhost' is not in GRAFT_OUTBOUND_ALLOW"),
    ):
        client.get(f"http://127.0.0.1:{server.port}/redirect?to={target}")
    assert server.connections == 1
    assert other_server.connections == 0


def test_redirect_to_listed_host_is_followed(server: Server, other_server: Server) -> None:
    target = f"http://localhost:{other_server.port}/"
    with guarded_client(_policy("127.0.0.1:*,localhost:*"), follow_redirects=True) as client:
        response = client.get(f"http://127.0.0.1:{server.port}/redirect?to={target}")
    assert response.status_code == 200
    assert other_server.hosts == [f"localhost:{other_server.port}"]


def test_redirects_are_off_by_default(server: Server) -> None:
    with guarded_client(_policy("127.0.0.1:*")) as client:
        response = client.get(f"http://127.0.0.1:{server.port}/redirect?to=http://x.test/")
    assert response.status_code == 302


def test_environment_proxy_is_not_used(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    # A proxy from the environment would carry requests past the guard.
    monkeypatch.setenv("HTTP_PROXY", "http://10.9.9.9:3128")
    monkeypatch.setenv("ALL_PROXY", "http://10.9.9.9:3128")
    with guarded_client(_policy("127.0.0.1:*"), timeout=5) as client:
        assert client.get(f"http://127.0.0.1:{server.port}/").status_code == 200


def test_async_client(server: Server) -> None:
    async def run() -> tuple[int, str]:
        async with guarded_async_client(_policy("127.0.0.1:*")) as client:
            ok = await client.get(f"http://127.0.0.1:{server.port}/")
        async with guarded_async_client(_policy("*:*")) as client:
            with pytest.raises(OutboundRefusedError, match="loopback") as info:
                await client.get(f"https://localhost:{server.port}/")
        return ok.status_code, info.value.type

    assert asyncio.run(run()) == (200, "outbound-refused")
    assert server.connections == 1


def test_https_verifies_the_host_name_while_connecting_by_address(tmp_path: Path) -> None:
    # A certificate for graft.test only: the connection goes to 127.0.0.1, yet SNI and the
    # certificate check use the name, so the handshake succeeds.
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=graft.test"),
            *("-addext", "subjectAltName=DNS:graft.test"),
        ],
        check=True,
        capture_output=True,
    )
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    trust = ssl.create_default_context(cafile=str(cert))
    resolver = _resolver({"graft.test": ["127.0.0.1"]})
    with (
        serve(server_context) as tls,
        guarded_client(_policy("graft.test:*"), resolver=resolver, verify=trust) as client,
    ):
        assert client.get(f"https://graft.test:{tls.port}/").text == "ok"
        assert tls.hosts == [f"graft.test:{tls.port}"]


@pytest.mark.parametrize(
    ("address", "reason"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.0.1", "private"),
        ("172.31.255.255", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not global"),
        ("0.0.0.0", "unspecified"),
        ("224.0.0.1", "multicast"),
        ("239.255.255.250", "multicast"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("192.0.2.1", "private"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("fc00::1", "private"),
        ("fd12:3456::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback (embedded in ::ffff:7f00:1)"),
        ("::ffff:10.0.0.1", "private (embedded in ::ffff:a00:1)"),
        ("::ffff:169.254.169.254", "link-local (embedded in ::ffff:a9fe:a9fe)"),
        ("2002:7f00:1::1", "loopback (embedded in 2002:7f00:1::1)"),
        ("64:ff9b::a9fe:a9fe", "link-local (embedded in 64:ff9b::a9fe:a9fe)"),
        ("8.8.8.8", None),
        ("93.184.216.34", None),
        ("2606:4700:4700::1111", None),
        # The mapped and NAT64 ranges lie in ::/8: refused for pattern hosts even when the IPv4
        # inside is public (list such a host exactly).
        ("::ffff:8.8.8.8", "reserved"),
        ("64:ff9b::808:808", "reserved"),
    ],
)
def test_address_table(address: str, reason: str | None) -> None:
    assert address_refusal(address) == reason


def test_policy_parsing() -> None:
    policy = _policy(
        " Models.Example.COM., [::1]:8080 , *.cdn.test, mlflow, 10.0.0.7:*, [fe80::1] ",
        mlflow_tracking_uri="https://mlflow.corp:5000/x",
    )
    assert policy.exact == frozenset(
        {("models.example.com", 80), ("models.example.com", 443), ("::1", 8080),
         ("mlflow.corp", 5000), ("10.0.0.7", None), ("fe80::1", 80), ("fe80::1", 443)}
    )  # fmt: skip
    assert policy.suffixes == frozenset({("cdn.test", 80), ("cdn.test", 443)})
    assert policy.admits("a.b.cdn.test", 443) and policy.admits("cdn.test", 443)
    assert not policy.admits("evilcdn.test", 443) and not policy.admits("cdn.test", 8443)
    assert policy.admits("10.0.0.7", 6379) and not policy.admits("mlflow.corp", 443)
    assert not policy.any_host
    assert OutboundPolicy.from_setting("").admits("example.com", 443) is False


def test_a_bare_loopback_host_opens_its_default_ports_only() -> None:
    # Issue 23 item 15: allowing 127.0.0.1 for one local service opened every loopback port.
    policy = _policy("127.0.0.1")
    policy.check_url("http://127.0.0.1/hook")
    policy.check_url("https://127.0.0.1/hook")
    for url in ("http://127.0.0.1:5432/", "http://127.0.0.1:8000/v1/jobs"):
        with pytest.raises(OutboundRefusedError, match=r"add '127\.0\.0\.1:\d+' there"):
            policy.check_url(url)
    _policy("127.0.0.1:5000").check_url("http://127.0.0.1:5000/api")
    with pytest.raises(OutboundRefusedError, match="port 5001"):
        _policy("127.0.0.1:5000").check_url("http://127.0.0.1:5001/api")
    mlflow = _policy("mlflow", mlflow_tracking_uri="http://127.0.0.1:5055")
    mlflow.check_url("http://127.0.0.1:5055/api/2.0/mlflow/runs/get")
    with pytest.raises(OutboundRefusedError, match="port 6379"):
        mlflow.check_url("http://127.0.0.1:6379/")


@pytest.mark.parametrize("entry", ["https://x.test", "x.test/path", "a*.test", "user@x.test"])
def test_policy_refuses_entries_that_are_not_hosts(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a host"):
        OutboundPolicy.from_setting(entry)


@pytest.mark.parametrize("entry", ["x.test:0", "x.test:65536", "x.test:http", "[::1]:x"])
def test_policy_refuses_bad_ports(entry: str) -> None:
    with pytest.raises(ValueError, match="is not a port"):
        OutboundPolicy.from_setting(entry)


def test_mlflow_token_needs_a_tracking_uri() -> None:
    with pytest.raises(ValueError, match="lists 'mlflow'"):
        OutboundPolicy.from_setting("mlflow")


def test_client_refuses_its_own_transport() -> None:
    with pytest.raises(TypeError, match="transport"):
        guarded_client(_policy("x.test"), transport=httpx.HTTPTransport())
