"""Per-receiver fairness and pooling: one small connection pool, and a few turns, per origin.

Why per origin (scheme, host, port): `zimsend bench` showed httpx/httpcore spending much of the
worker's CPU scanning its one shared pool — every request and every response close walks all
its connections and polls each idle socket. A pool of 200 connections made that walk long; a
pool capped at 16 halved the cost per POST, but one pool shared by every customer would let a
slow receiver occupy all 16 connections and hold up every other receiver. So each origin gets
its own pool of `per_origin` connections, and deliveries to an origin take `per_origin` turns:

- `OriginTurns`: at most `per_origin` POSTs to one origin at a time; the rest wait for *that*
  origin only (first come, first served: trio's semaphores are fair). Waiting is bounded by the
  caller (`WebhookSender`: the worker's lease must not run out while an event waits), and a turn
  is not part of the receiver's 5 s: the deadline starts when the request can be sent. Idle
  origins leave nothing behind.
- `OriginPools`: the httpx transport routing each request to its origin's own guarded pool
  (`guarded_transport`: every new connection is checked by `AddressGuard`, whatever the pool).
  Pools idle for `idle_seconds` are closed, and at most `max_origins` are kept: the least
  recently used idle ones go first. A pool in use is never closed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

import httpx
import trio

__all__ = ["Origin", "OriginBusy", "OriginPools", "OriginTurns", "origin_of"]

Origin = tuple[bytes, str, int]
_DEFAULT_PORTS: Final = {b"http": 80, b"https": 443}


def origin_of(url: httpx.URL) -> Origin:
    """(scheme, host, port) with the scheme's default port filled in: what shares a pool."""
    scheme = url.raw_scheme
    return scheme, url.host, url.port or _DEFAULT_PORTS.get(scheme, 0)


class OriginBusy(Exception):
    """No turn for this origin came within the wait allowed; the request was not sent."""


class OriginTurns:
    """`per_origin` turns per origin (see the module docstring)."""

    def __init__(self, per_origin: int) -> None:
        if per_origin < 1:
            raise ValueError("per_origin must be at least 1")
        self.per_origin = per_origin
        self._turns: dict[Origin, trio.Semaphore] = {}

    def __len__(self) -> int:
        """Origins with a POST in flight or waiting."""
        return len(self._turns)

    @asynccontextmanager
    async def turn(self, origin: Origin, max_wait: float) -> AsyncIterator[None]:
        """Hold one of `origin`'s turns; raises `OriginBusy` after `max_wait` seconds."""
        turns = self._turns.get(origin)
        if turns is None:
            turns = self._turns[origin] = trio.Semaphore(self.per_origin)
        try:
            try:
                turns.acquire_nowait()  # the usual case, without a checkpoint
            except trio.WouldBlock:
                acquired = False
                with trio.move_on_after(max_wait):
                    await turns.acquire()
                    acquired = True
                if not acquired:
                    raise OriginBusy(  # noqa: B904 - WouldBlock only chose the waiting path
                        f"not sent: {self.per_origin} deliveries to this receiver were already "
                        f"in flight for {max_wait:g} s (it answers too slowly for the load)"
                    )
        except BaseException:
            self._forget_if_unused(origin, turns)
            raise
        try:
            yield
        finally:
            turns.release()
            self._forget_if_unused(origin, turns)

    def _forget_if_unused(self, origin: Origin, turns: trio.Semaphore) -> None:
        if turns.value == self.per_origin and not turns.statistics().tasks_waiting:
            self._turns.pop(origin, None)


@dataclass(eq=False)
class _Pool:
    transport: httpx.AsyncBaseTransport
    in_use: int = 0  # requests whose response is not closed yet
    last_used: float = field(default_factory=trio.current_time)


class OriginPools(httpx.AsyncBaseTransport):
    """One transport (pool) per origin, made by `new_pool`; see the module docstring."""

    def __init__(
        self,
        new_pool: Callable[[], httpx.AsyncBaseTransport],
        *,
        max_origins: int = 256,
        idle_seconds: float = 60.0,
    ) -> None:
        self._new_pool = new_pool
        self.max_origins = max_origins
        self.idle_seconds = idle_seconds
        self._pools: OrderedDict[Origin, _Pool] = OrderedDict()  # least recently used first
        self._next_sweep = 0.0

    def __len__(self) -> int:
        return len(self._pools)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        now = trio.current_time()
        if now >= self._next_sweep or len(self._pools) > self.max_origins:
            await self._sweep(now)
        origin = origin_of(request.url)
        pool = self._pools.get(origin)
        if pool is None:
            pool = self._pools[origin] = _Pool(self._new_pool())
        else:
            self._pools.move_to_end(origin)
        pool.in_use += 1
        pool.last_used = now
        try:
            response = await pool.transport.handle_async_request(request)
        except BaseException:
            pool.in_use -= 1
            raise
        response.stream = _Release(response.stream, pool)
        return response

    async def _sweep(self, now: float) -> None:
        """Close idle pools: those unused for `idle_seconds`, then the least recently used
        beyond `max_origins`."""
        self._next_sweep = now + min(self.idle_seconds, 10.0)
        excess = len(self._pools) - self.max_origins
        closing: list[_Pool] = []
        for origin, pool in list(self._pools.items()):
            if pool.in_use:
                continue
            if excess > 0 or now - pool.last_used >= self.idle_seconds:
                del self._pools[origin]
                closing.append(pool)
                excess -= 1
        for pool in closing:
            await pool.transport.aclose()

    async def aclose(self) -> None:
        pools, self._pools = list(self._pools.values()), OrderedDict()
        for pool in pools:
            await pool.transport.aclose()


class _Release(httpx.AsyncByteStream):
    """The response body, marking its pool free again once closed."""

    def __init__(self, stream: httpx.SyncByteStream | httpx.AsyncByteStream, pool: _Pool) -> None:
        assert isinstance(stream, httpx.AsyncByteStream)
        self._stream = stream
        self._pool: _Pool | None = pool

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            if self._pool is not None:
                self._pool.in_use -= 1
                self._pool.last_used = trio.current_time()
                self._pool = None

