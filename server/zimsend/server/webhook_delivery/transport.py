"""An httpx transport for webhooks that cannot be pointed at the operator's own network.

How (DESIGN "Security baseline"): httpcore opens connections through a *network backend*;
`AddressGuard` is one that wraps the real backend. For every new connection it

1. turns the host into addresses itself — an address literal in any spelling is parsed
   (`parse_ip_literal`: `2130706433` is 127.0.0.1), a name is resolved (`Resolver`);
2. refuses the connection if *any* address is forbidden (`forbidden_reason`, after unwrapping
   IPv4-mapped, 6to4 and NAT64 forms), so a name answering one public and one private address
   cannot win a race;
3. connects to the checked address — never to the name, so nothing re-resolves it between the
   check and the connect (DNS rebinding) — while TLS keeps the URL's host name for SNI and
   certificate checks, and the `Host` header keeps it too (httpcore passes the original host to
   `start_tls`; only the TCP connect sees the address).

Unix sockets are refused outright, proxies from the environment are ignored (`trust_env=False`:
an `HTTPS_PROXY` would otherwise connect on our behalf to whatever it resolves), and redirects
are never followed (the client is built with `follow_redirects=False`).

The sender uses one such pool per receiver origin (`guarded_pools`, `origins.OriginPools`):
every pool connects through the same guard, so the checks hold whichever pool a request takes.

Tests inject a stub `Resolver` and a `connector` backend that records instead of connecting
(tests/test_webhook_transport.py), so no test opens a socket to a non-loopback address.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterable
from typing import Protocol

import httpcore
import httpx
import trio

from .addresses import IPAddress, forbidden_reason, parse_ip_literal
from .origins import OriginPools

__all__ = [
    "AddressGuard", "ForbiddenAddress", "Resolver", "SystemResolver", "guarded_pools",
    "guarded_transport",
]


class ForbiddenAddress(httpcore.ConnectError):
    """A connection the guard refused; httpx reports it as `httpx.ConnectError` with this
    message (it ends up in the webhook logs, so it names ranges, never secrets)."""


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
                    str(address), port, timeout=timeout, local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # try the next address, like a browser would
        assert failure is not None
        raise failure

    async def checked_addresses(
        self, host: str, port: int, timeout: float | None = None  # noqa: ASYNC109 - httpcore's network backend interface names it so
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


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """`httpx.AsyncHTTPTransport` whose connection pool uses an `AddressGuard`.

    httpx 0.28 takes no network backend argument, so the pool it builds is replaced by an
    equivalent one that has ours; everything else (request mapping, exception mapping to
    `httpx` errors) is httpx's own. tests/test_webhook_transport.py fails if httpx changes this.
    """

    def __init__(
        self, guard: AddressGuard, *, verify: ssl.SSLContext | bool, limits: httpx.Limits
    ) -> None:
        ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)  # as is if one
        super().__init__(verify=ssl_context, trust_env=False, limits=limits)
        if not isinstance(getattr(self, "_pool", None), httpcore.AsyncConnectionPool):
            raise RuntimeError(
                "this httpx version builds its pool differently; update transport.py"
            )
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=guard,
        )


def guarded_transport(
    *,
    allow_private: bool = False,
    resolver: Resolver | None = None,
    connector: httpcore.AsyncNetworkBackend | None = None,
    verify: ssl.SSLContext | bool = True,
    limits: httpx.Limits | None = None,
) -> httpx.AsyncBaseTransport:
    """One guarded pool (any origin); `allow_private` is the development setting."""
    guard = AddressGuard(resolver=resolver, connector=connector, allow_private=allow_private)
    return _GuardedTransport(
        guard, verify=verify,
        limits=limits or httpx.Limits(max_connections=200, max_keepalive_connections=50),
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
) -> OriginPools:
    """The transport the webhook sender uses: a guarded pool of `per_origin` connections per
    receiver origin (`origins.OriginPools`), all sharing one guard and one TLS context
    (building a context loads the CA bundle: ~10 ms of CPU)."""
    guard = AddressGuard(resolver=resolver, connector=connector, allow_private=allow_private)
    ssl_context = httpx.create_ssl_context(verify=verify, trust_env=False)
    limits = httpx.Limits(max_connections=per_origin, max_keepalive_connections=per_origin)
    return OriginPools(
        lambda: _GuardedTransport(guard, verify=ssl_context, limits=limits),
        max_origins=max_origins, idle_seconds=idle_seconds,
    )
