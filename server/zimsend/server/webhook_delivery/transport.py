"""The guarded network for webhooks: it cannot be pointed at the operator's own network.

How (DESIGN "Security baseline"): connections are opened through a *network backend*
(httpcore's interface: `connect_tcp`, then `start_tls` on the stream); `AddressGuard` is one
that wraps the real backend. For every new connection it

1. turns the host into addresses itself — an address literal in any spelling is parsed
   (`parse_ip_literal`: `2130706433` is 127.0.0.1), a name is resolved (`Resolver`);
2. refuses the connection if *any* address is forbidden (`forbidden_reason`, after unwrapping
   IPv4-mapped, 6to4 and NAT64 forms), so a name answering one public and one private address
   cannot win a race;
3. connects to the checked address — never to the name, so nothing re-resolves it between the
   check and the connect (DNS rebinding) — while TLS keeps the URL's host name for SNI and
   certificate checks, and the `Host` header keeps it too (`http1.Http1Pools` passes the
   original host to `start_tls`; only the TCP connect sees the address).

Unix sockets are refused outright, proxies from the environment are never consulted (an
`HTTPS_PROXY` would otherwise connect on our behalf to whatever it resolves), and redirects are
never followed (`Http1Pools` makes exactly one request per attempt).

The sender keeps one small pool per receiver origin (`guarded_pools`, `http1.Http1Pools`):
every pool connects through the same guard, so the checks hold whichever pool a request takes.

Tests inject a stub `Resolver` and a `connector` backend that records instead of connecting
(tests/test_webhook_transport.py), so no test opens a socket to a non-loopback address.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import httpcore
import httpx
import trio

from .addresses import IPAddress, forbidden_reason, parse_ip_literal

__all__ = [
    "AddressGuard",
    "ForbiddenAddress",
    "Resolver",
    "SystemResolver",
    "guarded_pools",
    "guarded_transport",
]

if TYPE_CHECKING:
    from .http1 import Http1Pools


class ForbiddenAddress(httpcore.ConnectError):
    """A connection the guard refused; the attempt fails with this message (it ends up in the
    webhook logs, so it names ranges, never secrets)."""


class Resolver(Protocol):
    """Turns a host name into the addresses to connect to (in preference order)."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]: ...


class SystemResolver:
    """The operating system's resolver (`getaddrinfo`), through trio's thread pool."""

    async def resolve(self, host: str, port: int) -> list[IPAddress]:
        infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        out: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in infos:
            address = parse_ip_literal(str(sockaddr[0]))
            if address is not None and address not in out:
                out.append(address)
        return out


class AddressGuard(httpcore.AsyncNetworkBackend):
    """The checking network backend described in the module docstring."""

    def __init__(
        self,
        *,
        resolver: Resolver | None = None,
        connector: httpcore.AsyncNetworkBackend | None = None,
        allow_private: bool = False,
    ) -> None:
        self._resolver: Resolver = resolver or SystemResolver()
        self._connector = connector or httpcore.TrioBackend()
        self._allow_private = allow_private

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's network backend interface names it so
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.checked_addresses(host, port, timeout)
        failure: Exception | None = None
        for address in addresses:
            try:
                return await self._connector.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # try the next address, like a browser would
        assert failure is not None
        raise failure

    async def checked_addresses(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's network backend interface names it so
    ) -> list[IPAddress]:
        """The addresses `host` may be reached at; raises `ForbiddenAddress` or
        `httpcore.ConnectError` when there are none."""
        literal = parse_ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._resolve(host, port, timeout)
        if not self._allow_private:
            for address in addresses:
                reason = forbidden_reason(address)
                if reason is not None:
                    raise ForbiddenAddress(f"refused to connect to {host}: {reason}")
        return addresses

    async def _resolve(self, host: str, port: int, timeout: float | None) -> list[IPAddress]:  # noqa: ASYNC109 - httpcore's network backend interface names it so
        try:
            with trio.fail_after(timeout if timeout is not None else float("inf")):
                addresses = await self._resolver.resolve(host, port)
        except trio.TooSlowError:
            raise httpcore.ConnectTimeout(f"resolving {host} took too long") from None
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host} ({exc.strerror or exc})") from None
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        return addresses

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's network backend interface names it so
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise ForbiddenAddress("webhooks never connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._connector.sleep(seconds)


def guarded_transport(
    *,
    allow_private: bool = False,
    resolver: Resolver | None = None,
    connector: httpcore.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
    per_origin: int = 200,
) -> Http1Pools:
    """Guarded pools with room for `per_origin` connections to each origin (tests; the worker
    uses `guarded_pools` with the sender's turns); `allow_private` is the development setting."""
    return guarded_pools(
        per_origin=per_origin,
        allow_private=allow_private,
        resolver=resolver,
        connector=connector,
        verify=verify,
    )


def guarded_pools(
    *,
    per_origin: int,
    allow_private: bool = False,
    resolver: Resolver | None = None,
    connector: httpcore.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
    max_origins: int = 256,
    idle_seconds: float = 60.0,
) -> Http1Pools:
    """The transport the webhook sender uses: keep-alive HTTP/1.1 with up to `per_origin` idle
    connections per receiver origin (`http1.Http1Pools`), all sharing one guard and one TLS
    context (building a context loads the CA bundle: ~10 ms of CPU). The context is httpx's
    (certifi's CA bundle, the environment's SSL settings ignored)."""
    from .http1 import Http1Pools

    guard = AddressGuard(resolver=resolver, connector=connector, allow_private=allow_private)
    ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
    return Http1Pools(
        guard,
        ssl_context,
        per_origin=per_origin,
        max_origins=max_origins,
        idle_seconds=idle_seconds,
    )
