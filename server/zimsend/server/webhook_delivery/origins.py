"""Per-receiver fairness: a few turns, and one small connection pool, per origin.

Why per origin (scheme, host, port): one pool shared by every customer would let a slow
receiver occupy all its connections and hold up every other receiver. So each origin gets its
own pool of `per_origin` connections (`http1.Http1Pools`), and deliveries to an origin take
`per_origin` turns:

- `OriginTurns`: at most `per_origin` POSTs to one origin at a time; the rest wait for *that*
  origin only (first come, first served: trio's semaphores are fair). Waiting is bounded by the
  caller (`WebhookSender`: the worker's lease must not run out while an event waits), and a turn
  is not part of the receiver's 5 s: the deadline starts when the request can be sent. Idle
  origins leave nothing behind.
- `http1.Http1Pools`: each origin's own keep-alive connections, every new one checked by
  `AddressGuard`. Pools idle for `idle_seconds` are closed, and at most `max_origins` are
  kept: the least recently used idle ones go first. A pool in use is never closed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import httpx
import trio

__all__ = ["Origin", "OriginBusy", "OriginTurns", "origin_of"]

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
