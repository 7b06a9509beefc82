"""`Http1Pools`: the webhook POST as lean keep-alive HTTP/1.1, one small pool per origin.

Why not httpx: `zimsend bench --scenarios webhooks` measured ~2 ms of the worker's CPU per
signed POST, about half of it in httpx/httpcore's per-request machinery (the client's request
and response objects, the pool assigning requests by walking and polling every connection,
headers and body written separately). A webhook needs far less: one POST, a status line, a
bounded drain. So this module speaks HTTP/1.1 with `h11` (the maintained sans-I/O protocol
implementation httpcore itself uses) over the same guarded network backend, and keeps per
origin a stack of idle keep-alive connections (the most recently used first, so a steady load
keeps few of them warm).

What stays as it was (DESIGN "Security baseline", the module docstring of transport.py):

- every new connection goes through `AddressGuard.connect_tcp`: the host resolved once, every
  address checked against the forbidden ranges, the checked address connected to;
- TLS with the URL's host for SNI and certificate checks (one shared `SSLContext`), the `Host`
  header the URL's;
- nothing is followed: a 3xx is the caller's failure; the caller's overall deadline
  (`WebhookSender`) cancels a request anywhere, and a connection whose exchange did not end
  cleanly is closed, never reused;
- at most `drain_limit` bytes of a response body are read; beyond that the connection is closed.

Idle connections are closed after `keepalive_seconds` (the receiver may have closed them), and
one that has become readable while idle (the peer's close, or garbage) is closed instead of
reused. Whole origins idle for `idle_seconds` are dropped, and at most `max_origins` are kept,
least recently used first, as `origins.OriginTurns` bounds what is in flight per origin.
"""

from __future__ import annotations

import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import h11
import httpcore
import httpx
import trio

from .origins import Origin, origin_of
from .transport import AddressGuard

__all__ = ["Http1Pools", "HttpFailure"]

_READ_SIZE: Final = 65536


class HttpFailure(Exception):
    """An exchange that gave no status; the message is for the webhook logs (no secrets)."""


@dataclass(eq=False)
class _Connection:
    stream: httpcore.AsyncNetworkStream
    protocol: h11.Connection = field(default_factory=lambda: h11.Connection(h11.CLIENT))
    idle_since: float = 0.0


@dataclass(eq=False)
class _Origin:
    idle: list[_Connection] = field(default_factory=list)  # most recently used last
    in_use: int = 0
    last_used: float = 0.0


class Http1Pools:
    """Keep-alive HTTP/1.1 POSTs through one `AddressGuard` (see the module docstring)."""

    def __init__(
        self,
        guard: AddressGuard,
        ssl_context: ssl.SSLContext,
        *,
        per_origin: int,
        max_origins: int = 256,
        idle_seconds: float = 60.0,
        keepalive_seconds: float = 5.0,
        drain_limit: int = 64 * 1024,
    ) -> None:
        self.guard = guard
        self.ssl_context = ssl_context
        self.per_origin = per_origin
        self.max_origins = max_origins
        self.idle_seconds = idle_seconds
        self.keepalive_seconds = keepalive_seconds
        self.drain_limit = drain_limit
        self._origins: OrderedDict[Origin, _Origin] = OrderedDict()  # least recently used first
        self._next_sweep = 0.0

    def __len__(self) -> int:
        """Origins with a pool (connections in use or idle)."""
        return len(self._origins)

    async def post(
        self, url: httpx.URL, headers: list[tuple[bytes, bytes]], body: bytes, timeout: float  # noqa: ASYNC109 - the connect timeout the guard passes on; the caller's deadline bounds the whole
    ) -> int:
        """POST `body` to `url`; returns the response status, or raises `HttpFailure`.
        `timeout` bounds connecting (resolution, TCP, TLS); the caller bounds the whole."""
        now = trio.current_time()
        if now >= self._next_sweep or len(self._origins) > self.max_origins:
            await self._sweep(now)
        key = origin_of(url)
        origin = self._origins.get(key)
        if origin is None:
            origin = self._origins[key] = _Origin()
        else:
            self._origins.move_to_end(key)
        origin.in_use += 1
        origin.last_used = now
        connection: _Connection | None = None
        reusable = False
        try:
            connection = await self._reuse(origin, now) or await self._connect(url, timeout)
            status, reusable = await self._exchange(connection, url, headers, body)
            return status
        except (httpcore.NetworkError, httpcore.TimeoutException, OSError) as exc:
            raise HttpFailure(_network_error(exc)) from exc
        except h11.ProtocolError as exc:
            raise HttpFailure(f"invalid HTTP response: {exc}") from exc
        finally:
            origin.in_use -= 1
            origin.last_used = trio.current_time()
            if connection is not None:
                if reusable and len(origin.idle) < self.per_origin:
                    connection.protocol.start_next_cycle()
                    connection.idle_since = origin.last_used
                    origin.idle.append(connection)
                else:
                    await _close(connection)

    async def _reuse(self, origin: _Origin, now: float) -> _Connection | None:
        while origin.idle:
            connection = origin.idle.pop()
            if (now - connection.idle_since < self.keepalive_seconds
                    and not connection.stream.get_extra_info("is_readable")):
                return connection
            await _close(connection)
        return None

    async def _connect(self, url: httpx.URL, timeout: float) -> _Connection:  # noqa: ASYNC109 - see post()
        host, port = url.host, url.port or (443 if url.scheme == "https" else 80)
        stream = await self.guard.connect_tcp(host, port, timeout=timeout)
        if url.scheme == "https":
            try:
                stream = await stream.start_tls(self.ssl_context, server_hostname=host,
                                                timeout=timeout)
            except BaseException:
                await _close(_Connection(stream))
                raise
        return _Connection(stream)

    async def _exchange(
        self, connection: _Connection, url: httpx.URL, headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> tuple[int, bool]:
        """Write the request in one piece, read the status, drain; (status, reusable)."""
        protocol = connection.protocol
        head = [(b"Host", url.netloc), (b"Content-Length", str(len(body)).encode()), *headers]
        await connection.stream.write(
            protocol.send(h11.Request(method=b"POST", target=url.raw_path, headers=head))
            + protocol.send(h11.Data(data=body)) + protocol.send(h11.EndOfMessage())
        )
        status: int | None = None
        drained = 0
        try:
            while True:
                event = protocol.next_event()
                if event is h11.NEED_DATA:
                    protocol.receive_data(await connection.stream.read(_READ_SIZE))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, h11.Data):
                    drained += len(event.data)
                    if drained > self.drain_limit:
                        break
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
        except (httpcore.NetworkError, httpcore.TimeoutException, OSError, h11.ProtocolError):
            if status is None:
                raise
            return status, False  # the status line decides; the body was only drained
        if status is None:
            raise HttpFailure("invalid HTTP response: the server closed without a status")
        return status, protocol.our_state is h11.DONE and protocol.their_state is h11.DONE

    async def _sweep(self, now: float) -> None:
        """Drop idle origins (unused for `idle_seconds`, then the least recently used beyond
        `max_origins`) and idle connections past `keepalive_seconds`."""
        self._next_sweep = now + min(self.idle_seconds, self.keepalive_seconds, 10.0)
        excess = len(self._origins) - self.max_origins
        closing: list[_Connection] = []
        for key, origin in list(self._origins.items()):
            if not origin.in_use and (excess > 0 or now - origin.last_used >= self.idle_seconds):
                del self._origins[key]
                closing.extend(origin.idle)
                excess -= 1
                continue
            stale = [c for c in origin.idle if now - c.idle_since >= self.keepalive_seconds]
            if stale:
                origin.idle = [c for c in origin.idle if c not in stale]
                closing.extend(stale)
        for connection in closing:
            await _close(connection)

    async def aclose(self) -> None:
        origins, self._origins = list(self._origins.values()), OrderedDict()
        for origin in origins:
            for connection in origin.idle:
                await _close(connection)


async def _close(connection: _Connection) -> None:
    """Close without a fuss: a broken or cancelled connection is simply dropped."""
    with trio.CancelScope(shield=True), trio.move_on_after(1):
        try:
            await connection.stream.aclose()
        except (httpcore.NetworkError, OSError, trio.BrokenResourceError):
            pass


def _network_error(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, httpcore.ConnectError) and text.startswith("refused to connect"):
        return text  # `ForbiddenAddress`: names the range, never a secret
    if isinstance(exc, httpcore.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpcore.ConnectError):
        return f"connection failed: {text}" if text else "connection failed"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
