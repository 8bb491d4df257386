"""The one guard on outgoing requests: allow-listed hosts, public addresses, checked per connection.

Graft fetches sources by URL, talks to an MLflow registry and delivers webhooks. Each of those
URLs comes from a client, so each could point at the metadata service, the database or the API
itself. Every outgoing request therefore goes through :func:`guarded_client` (or
:func:`guarded_async_client`), whose transport:

1. refuses the URL unless its scheme is ``https`` (``http`` only for a host named exactly) and
   its host matches the allow list, before anything is resolved;
2. on every new connection, resolves the host once, refuses the whole connection if any address
   is loopback, private, link-local, multicast, unspecified or otherwise not global (IPv4-mapped,
   6to4, Teredo and NAT64 forms unwrapped first), and then connects to that exact checked
   address. Nothing is resolved twice, so DNS rebinding has no window. TLS still uses the host
   name, so SNI and certificate checks are unchanged.

Redirects are sent through the same transport by httpx, so every hop is checked again.

The allow list (``GRAFT_OUTBOUND_ALLOW``) holds host names, IP literals, ``*.example.com``
domain patterns or ``*`` (any host), each with an optional port: ``host`` alone admits the
default ports only (80 and 443), ``host:8080`` that port, ``host:*`` every port. Listing
``127.0.0.1`` for a local service therefore opens no other loopback port. A host named
*exactly* may resolve to any address (the operator vouched for it) and may use ``http``; a
host admitted only by a pattern must resolve to global addresses and use ``https``. The token
``mlflow`` stands for the tracking server's host and port.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import anyio.to_thread
import httpcore
import httpx

from app.errors import GraftError

__all__ = [
    "OutboundPolicy",
    "OutboundRefusedError",
    "Resolver",
    "address_refusal",
    "guarded_async_client",
    "guarded_client",
]

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``: the DNS boundary, replaceable in tests."""

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SCHEMES = ("http", "https")


class OutboundRefusedError(GraftError):
    """An outgoing request the policy forbids; raised before any connection is made.

    The one class for it in every layer: a service that knows more (``source.uri``) says so
    with :meth:`~app.errors.GraftError.prefixed`, keeping the class.

    Attributes:
        url: the URL (or ``host:port``) that was refused (for logs; not in the problem body).
    """

    type = "outbound-refused"
    status = 422
    title = "Outbound request refused"

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


def _normalise_host(host: str) -> str:
    """Lower-case, without IPv6 brackets or a trailing dot, IDNA-encoded (as httpx sends it)."""
    host = host.strip().lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return host


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses a packet to ``ip`` may really reach (mapped, 6to4, Teredo, NAT64)."""
    found = [a for a in (ip.ipv4_mapped, ip.sixtofour) if a is not None]
    if ip.teredo is not None:
        found.extend(ip.teredo)
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return found


def address_refusal(address: str | IPAddress) -> str | None:
    """Why a connection to ``address`` is refused for a host not named exactly, or ``None``.

    Args:
        address: an IPv4 or IPv6 address (a scope id such as ``%eth0`` is ignored).

    Returns:
        A short reason (``"loopback"``, ``"private"``, …), or ``None`` for a global address.
    """
    if isinstance(address, str):
        address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(address, ipaddress.IPv6Address):
        for inner in _embedded_ipv4(address):
            reason = address_refusal(inner)
            if reason is not None:
                return f"{reason} (embedded in {address})"
    # Order matters only for the message: the most specific reason first.
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        # is_global also excludes shared (100.64/10), documentation and benchmark ranges.
        ("not global", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def _system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise httpcore.ConnectError(f"cannot resolve {host!r}: {exc}") from exc
    # Keep getaddrinfo's order (it ranks by preference) without duplicates.
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


_DEFAULT_PORTS: tuple[int, ...] = (80, 443)
_SCHEME_PORTS = {"http": 80, "https": 443}
Allowed = frozenset[tuple[str, int | None]]
"""``(host, port)`` pairs; a ``None`` port admits every port."""


def _split_port(entry: str) -> tuple[str, tuple[int | None, ...]]:
    """``host[:port]`` -> ``(host, ports)``: the default ports, one port, or ``(None,)``."""
    host, port = entry, ""
    if entry.startswith("["):  # [v6] or [v6]:port
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") else rest
    elif entry.count(":") == 1:  # host:port (a bare IPv6 address has several colons)
        host, port = entry.split(":")
    if not port:
        return host, _DEFAULT_PORTS
    if port == "*":
        return host, (None,)
    if not port.isascii() or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"GRAFT_OUTBOUND_ALLOW entry {entry!r}: {port!r} is not a port")
    return host, (int(port),)


@dataclass(frozen=True)
class OutboundPolicy:
    """Which hosts, on which ports, Graft may connect to.

    Attributes:
        exact: ``(host, port)`` named exactly (normalised; port ``None``: any): any address,
            ``http`` allowed.
        suffixes: ``(domain, port)`` from ``*.example.com`` patterns (``"example.com"``), and
            ``("", port)`` for ``*``: global addresses and ``https`` only.
    """

    exact: Allowed = frozenset()
    suffixes: Allowed = frozenset()

    @property
    def any_host(self) -> bool:
        """Whether ``*`` was listed (any host, on global addresses)."""
        return any(domain == "" for domain, _ in self.suffixes)

    @classmethod
    def from_setting(cls, value: str, *, mlflow_tracking_uri: str | None = None) -> OutboundPolicy:
        """Parse ``GRAFT_OUTBOUND_ALLOW``.

        Args:
            value: comma-separated hosts, ``*.domain`` patterns, ``*``, and ``mlflow``, each
                with an optional ``:port`` or ``:*`` (without: ports 80 and 443).
            mlflow_tracking_uri: what ``mlflow`` stands for (its host and port, exactly).

        Returns:
            The policy.

        Raises:
            ValueError: ``mlflow`` is listed but no tracking URI is configured, or an entry is
                not a host (a URL, a path, a bad port).
        """
        exact: set[tuple[str, int | None]] = set()
        suffixes: set[tuple[str, int | None]] = set()
        for raw in value.split(","):
            entry = raw.strip()
            if not entry:
                continue
            if entry.lower() == "mlflow":
                if not mlflow_tracking_uri:
                    raise ValueError(
                        "GRAFT_OUTBOUND_ALLOW lists 'mlflow' but no MLflow tracking URI is set"
                    )
                url = httpx.URL(mlflow_tracking_uri)
                port = url.port or _SCHEME_PORTS.get(url.scheme, 443)
                exact.add((_normalise_host(url.host), port))
                continue
            host, ports = _split_port(entry) if not any(c in entry for c in "/@") else ("/", ())
            if host == "*":
                suffixes.update(("", p) for p in ports)
            elif host.startswith("*.") and len(host) > 2 and "*" not in host[2:]:
                suffixes.update((_normalise_host(host[2:]), p) for p in ports)
            elif not host or any(c in host for c in "/*@[]"):
                raise ValueError(
                    f"GRAFT_OUTBOUND_ALLOW entry {entry!r} is not a host: list host names, IP "
                    "addresses, '*.domain', '*' or 'mlflow', each with an optional ':port' "
                    "(no scheme or path)"
                )
            else:
                exact.update((_normalise_host(host), p) for p in ports)
        return cls(exact=frozenset(exact), suffixes=frozenset(suffixes))

    def is_exact(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is named exactly (so any address and ``http`` are allowed)."""
        host = _normalise_host(host)
        return (host, port) in self.exact or (host, None) in self.exact

    def admits(self, host: str, port: int) -> bool:
        """Whether ``host:port`` is on the allow list at all (exactly or by a pattern)."""
        if self.is_exact(host, port):
            return True
        host = _normalise_host(host)
        return any(
            (p is None or p == port) and (s == "" or host == s or host.endswith("." + s))
            for s, p in self.suffixes
        )

    def check_url(self, url: httpx.URL | str) -> None:
        """Refuse a URL by scheme and host, before anything is resolved.

        Raises:
            OutboundRefusedError: not http(s), a host off the list, or ``http`` to a host that
                is only admitted by a pattern.
        """
        url = _parsed(url)
        if url.scheme not in _SCHEMES:
            raise OutboundRefusedError(
                f"refused {url.scheme}: URL; only https (and http to hosts listed exactly in "
                "GRAFT_OUTBOUND_ALLOW) may be fetched",
                url=str(url),
            )
        port = url.port or _SCHEME_PORTS[url.scheme]
        if not url.host or not self.admits(url.host, port):
            listed = f"{url.host}:{port}" if port not in _DEFAULT_PORTS else url.host
            raise OutboundRefusedError(
                f"host {url.host!r} is not in GRAFT_OUTBOUND_ALLOW on port {port}; add "
                f"{listed!r} there to allow it",
                url=str(url),
            )
        if url.scheme == "http" and not self.is_exact(url.host, port):
            raise OutboundRefusedError(
                f"refused http://{url.host}: plain http is allowed only to hosts listed exactly "
                "in GRAFT_OUTBOUND_ALLOW; use https",
                url=str(url),
            )

    def check_addresses(self, host: str, port: int, addresses: Iterable[str]) -> list[str]:
        """The addresses to connect to, all of them checked.

        Args:
            host: the host the addresses were resolved from.
            port: the port, for the message.
            addresses: every address the resolver gave.

        Returns:
            The addresses, in order.

        Raises:
            OutboundRefusedError: a host not named exactly resolved to at least one non-global
                address (one is enough: a resolver that mixes them is not to be trusted), or to
                none at all.
        """
        found = list(addresses)
        if not found:
            raise OutboundRefusedError(f"{host} resolved to no address", url=f"{host}:{port}")
        if self.is_exact(host, port):
            return found
        for address in found:
            reason = address_refusal(address)
            if reason is not None:
                raise OutboundRefusedError(
                    f"{host} resolves to {address}, a {reason} address; list the host exactly "
                    "in GRAFT_OUTBOUND_ALLOW to allow it",
                    url=f"{host}:{port}",
                )
        return found


def _parsed(url: httpx.URL | str) -> httpx.URL:
    """``url`` as httpx parses it, or a refusal for what it cannot (``http://[::1``)."""
    try:
        parsed = httpx.URL(url)
        _ = parsed.host  # decodes xn-- labels: a malformed one fails here, not later
    except (httpx.InvalidURL, UnicodeError, ValueError) as exc:
        # idna's IDNAError (a malformed xn-- label) is a UnicodeError.
        text = str(url)[:200]
        raise OutboundRefusedError(f"{text!r} is not a valid URL", url=text) from exc
    return parsed


def _unbracket(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


class _GuardedBackend(httpcore.NetworkBackend):
    """Resolves, checks every address, then connects to a checked address by number."""

    def __init__(self, policy: OutboundPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        host = _unbracket(host)
        addresses = self._policy.check_addresses(host, port, self._resolver(host, port))
        # Try each checked address in the resolver's order, as a plain connect would.
        for address in addresses[:-1]:
            try:
                return self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                logger.debug("connect to %s (%s) failed, trying the next address", address, host)
        return self._inner.connect_tcp(addresses[-1], port, timeout, local_address, socket_options)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise OutboundRefusedError("unix sockets are never used for outgoing requests", url=path)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _AsyncGuardedBackend(httpcore.AsyncNetworkBackend):
    """The async twin of :class:`_GuardedBackend`; resolution runs in a worker thread."""

    def __init__(self, policy: OutboundPolicy, resolver: Resolver) -> None:
        self._policy = policy
        self._resolver = resolver
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        host = _unbracket(host)
        resolved = await anyio.to_thread.run_sync(self._resolver, host, port)
        addresses = self._policy.check_addresses(host, port, resolved)
        # Try each checked address in the resolver's order, as a plain connect would.
        for address in addresses[:-1]:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout):
                logger.debug("connect to %s (%s) failed, trying the next address", address, host)
        return await self._inner.connect_tcp(
            addresses[-1], port, timeout, local_address, socket_options
        )

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise OutboundRefusedError("unix sockets are never used for outgoing requests", url=path)

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


def _pool_options(verify: typing.Any, limits: httpx.Limits) -> dict[str, typing.Any]:
    """The settings httpx gives the pool it builds, for the guarded pool that replaces it."""
    return {
        "ssl_context": httpx.create_ssl_context(verify=verify),
        "max_connections": limits.max_connections,
        "max_keepalive_connections": limits.max_keepalive_connections,
        "keepalive_expiry": limits.keepalive_expiry,
    }


class _GuardedTransport(httpx.HTTPTransport):
    """httpx's own transport with the URL check in front and the guarded network backend."""

    def __init__(
        self, policy: OutboundPolicy, resolver: Resolver, verify: typing.Any, limits: httpx.Limits
    ) -> None:
        super().__init__(verify=verify, limits=limits)
        self._policy = policy
        # httpx offers no network_backend argument: replace the pool it built with one that
        # has the same settings and our backend (the pool is the only thing that connects).
        self._pool = httpcore.ConnectionPool(
            **_pool_options(verify, limits), network_backend=_GuardedBackend(policy, resolver)
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._policy.check_url(request.url)
        return super().handle_request(request)


class _AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    def __init__(
        self, policy: OutboundPolicy, resolver: Resolver, verify: typing.Any, limits: httpx.Limits
    ) -> None:
        super().__init__(verify=verify, limits=limits)
        self._policy = policy
        self._pool = httpcore.AsyncConnectionPool(
            **_pool_options(verify, limits),
            network_backend=_AsyncGuardedBackend(policy, resolver),
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self._policy.check_url(request.url)
        return await super().handle_async_request(request)


def _client_options(kwargs: dict[str, typing.Any]) -> dict[str, typing.Any]:
    for forbidden in ("transport", "mounts", "proxy", "trust_env"):
        if forbidden in kwargs:
            raise TypeError(f"guarded clients choose {forbidden} themselves")
    # trust_env=False: an HTTP(S)_PROXY from the environment would mount a proxy transport
    # beside ours and bypass every check.
    return {"trust_env": False, "follow_redirects": False, **kwargs}


def guarded_client(
    policy: OutboundPolicy,
    *,
    resolver: Resolver | None = None,
    verify: typing.Any = True,
    limits: httpx.Limits | None = None,
    **kwargs: typing.Any,
) -> httpx.Client:
    """An ``httpx.Client`` whose every request and connection is checked by ``policy``.

    Args:
        policy: the allow list.
        resolver: ``(host, port) -> addresses``; the system resolver by default.
        verify: TLS verification, as httpx takes it (an ``ssl.SSLContext`` for a private CA).
        limits: connection pool limits.
        **kwargs: other ``httpx.Client`` options (``timeout``, ``headers``,
            ``follow_redirects``, ``max_redirects``…); redirects are off unless asked for, and
            each hop is checked again when they are on.

    Returns:
        The client; close it (or use it as a context manager).

    Raises:
        TypeError: ``transport``, ``mounts``, ``proxy`` or ``trust_env`` was passed.
    """
    transport = _GuardedTransport(
        policy, resolver or _system_resolver, verify, limits or httpx.Limits()
    )
    return httpx.Client(transport=transport, **_client_options(kwargs))


def guarded_async_client(
    policy: OutboundPolicy,
    *,
    resolver: Resolver | None = None,
    verify: typing.Any = True,
    limits: httpx.Limits | None = None,
    **kwargs: typing.Any,
) -> httpx.AsyncClient:
    """The ``httpx.AsyncClient`` twin of :func:`guarded_client` (same arguments)."""
    transport = _AsyncGuardedTransport(
        policy, resolver or _system_resolver, verify, limits or httpx.Limits()
    )
    return httpx.AsyncClient(transport=transport, **_client_options(kwargs))
