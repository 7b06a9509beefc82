"""`Http1Pools`: the webhook POST as lean keep-alive HTTP/1.1, one small pool per origin.

Why not httpx: a webhook needs one POST, a status line and a bounded drain, and httpx/httpcore's
per-request machinery (request and response objects, a pool that walks and polls every
connection per request, head and body written separately) was most of the worker's CPU per
POST (docs/benchmarks.md, scenario 7). So this module writes the request itself — one buffer:
a head of our own with every value checked for control characters, then the body — parses the
response with `httptools` (llhttp, Node.js's parser; `h11`, pure Python, was measured too),
over the same guarded network backend, and keeps per origin a stack of idle keep-alive
connections (the most recently used first, so a steady load keeps few of them warm).

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

import re
import ssl
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

import httpcore
import httptools
import httpx
import trio

from .origins import Origin, origin_of
from .transport import AddressGuard

__all__ = ["Http1Pools", "HttpFailure"]

_READ_SIZE: Final = 65536
#: Bytes no header value or request target may contain (CR and LF above all: injection).
_CONTROL: Final = re.compile(rb"[\x00-\x1f\x7f]")


class HttpFailure(Exception):
    """An exchange that gave no status; the message is for the webhook logs (no secrets)."""


class _Response:
    """httptools' callbacks for one connection's responses (parsed in order, keep-alive)."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.status: int | None = None
        self.complete = False
        self.keep_alive = False
        self.body = 0

    def reset(self) -> None:
        self.status, self.complete, self.keep_alive, self.body = None, False, False, 0

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        if self.status is not None and self.status < 200:
            self.status = None  # 1xx: the real answer follows
            return
        self.complete = True
        self.keep_alive = self.parser.should_keep_alive()


@dataclass(eq=False)
class _Connection:
    stream: httpcore.AsyncNetworkStream
    response: _Response = field(default_factory=_Response)
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
        self,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
        timeout: float,  # noqa: ASYNC109 - the connect timeout the guard passes on; the caller's deadline bounds the whole
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
        except httptools.HttpParserError as exc:
            raise HttpFailure(f"invalid HTTP response: {exc}") from exc
        finally:
            origin.in_use -= 1
            origin.last_used = trio.current_time()
            if connection is not None:
                if reusable and len(origin.idle) < self.per_origin:
                    connection.idle_since = origin.last_used
                    origin.idle.append(connection)
                else:
                    await _close(connection)

    async def _reuse(self, origin: _Origin, now: float) -> _Connection | None:
        while origin.idle:
            connection = origin.idle.pop()
            if (
                now - connection.idle_since < self.keepalive_seconds
                and not connection.stream.get_extra_info("is_readable")
            ):
                return connection
            await _close(connection)
        return None

    async def _connect(self, url: httpx.URL, timeout: float) -> _Connection:  # noqa: ASYNC109 - see post()
        host, port = url.host, url.port or (443 if url.scheme == "https" else 80)
        stream = await self.guard.connect_tcp(host, port, timeout=timeout)
        if url.scheme == "https":
            try:
                stream = await stream.start_tls(
                    self.ssl_context, server_hostname=host, timeout=timeout
                )
            except BaseException:
                await _close(_Connection(stream))
                raise
        return _Connection(stream)

    async def _exchange(
        self,
        connection: _Connection,
        url: httpx.URL,
        headers: list[tuple[bytes, bytes]],
        body: bytes,
    ) -> tuple[int, bool]:
        """Write the request in one piece, read the status, drain; (status, reusable)."""
        head = [
            b"POST ",
            _checked(url.raw_path),
            b" HTTP/1.1\r\nHost: ",
            _checked(url.netloc),
            b"\r\nContent-Length: ",
            str(len(body)).encode(),
            b"\r\n",
        ]
        for name, value in headers:
            head += (_checked(name), b": ", _checked(value), b"\r\n")
        head += (b"\r\n", body)
        await connection.stream.write(b"".join(head))
        response = connection.response
        response.reset()
        try:
            while not response.complete and response.body <= self.drain_limit:
                data = await connection.stream.read(_READ_SIZE)
                if not data:
                    break  # closed: a body delimited by the close ends here
                response.parser.feed_data(data)
        except (
            httpcore.NetworkError,
            httpcore.TimeoutException,
            OSError,
            httptools.HttpParserError,
        ):
            if response.status is None:
                raise
            return response.status, False  # the status line decides; the body was only drained
        if response.status is None:
            raise HttpFailure("invalid HTTP response: the server closed without a status")
        return response.status, response.complete and response.keep_alive

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


def _checked(value: bytes) -> bytes:
    """A header value or target as given, refused if it could break the request's framing
    (every one is ours or a checked URL's, so this never fires unless something upstream
    broke)."""
    if _CONTROL.search(value):
        raise HttpFailure("refused to send a header value with control characters")
    return value


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
