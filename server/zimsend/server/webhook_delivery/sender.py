"""`WebhookSender`: one signed POST of one event to one URL, with one overall deadline.

Why one overall deadline (`trio.move_on_after`): per-phase timeouts (connect, write, each
read) would let a receiver trickling bytes hold an attempt for many times 5 s. SPEC §7 says the
receiver must answer 2xx within 5 s, full stop.

Why a capped read: the response body is not needed, and a hostile receiver could send
gigabytes. Success is decided by the status line alone; up to 64 KiB is drained so the
connection can be reused, the rest is dropped with the connection (`http1.Http1Pools`, the
lean keep-alive HTTP/1.1 client the POSTs go through).

Why turns (`origins`): at most `per_origin` POSTs go to one receiver origin at a time, each
origin with its own small pool, so a slow receiver holds up only its own deliveries. Waiting
for a turn is not part of the receiver's deadline (it has not been sent anything yet) but is
bounded by `max_wait` — the worker sets it so the event's lease cannot run out meanwhile; an
attempt that got no turn in time is not sent (`busy`), and the worker gives the event back.

An attempt never raises for anything the receiver does: the outcome — status, time, error text
without secrets — is returned for the webhook logs. Cancellation (worker shutdown) propagates.
"""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from .http1 import Http1Pools, HttpFailure
from .origins import OriginBusy, OriginTurns, origin_of
from .signing import signature_headers
from .transport import guarded_pools
from .urls import WebhookUrlError, check_webhook_url

__all__ = ["AttemptOutcome", "WebhookSender"]

_MAX_ERROR_LENGTH: Final = 500
PER_ORIGIN: Final = 16  # connections (and POSTs in flight) per receiver origin


@dataclass(frozen=True)
class AttemptOutcome:
    """What one HTTP attempt gave. `status` is None when no response arrived. `busy`: no turn
    at the receiver's origin came in time, nothing was sent (the worker gives the event back
    instead of spending one of its attempts)."""

    success: bool
    status: int | None
    elapsed_ms: int
    error: str | None
    at: dt.datetime
    busy: bool = False


class WebhookSender:
    """Owns the connection pools (use `async with`). `allow_insecure` is the development
    setting: plain HTTP and private addresses allowed. `max_wait` bounds the wait for a turn
    at a busy origin (default: the timeout)."""

    def __init__(
        self,
        *,
        timeout: float,
        allow_insecure: bool,
        transport: Http1Pools | None = None,
        per_origin: int = PER_ORIGIN,
        max_wait: float | None = None,
    ) -> None:
        self.timeout = timeout
        self.allow_insecure = allow_insecure
        self.max_wait = timeout if max_wait is None else max_wait
        self._turns = OriginTurns(per_origin)
        if transport is None:
            transport = guarded_pools(per_origin=per_origin, allow_private=allow_insecure)
        self._pools = transport

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._pools.aclose()

    async def post(self, url: str, *, secret: str, event_id: str, body: bytes) -> AttemptOutcome:
        """POST `body` to `url`, signed with `secret`; see the module docstring."""
        try:
            target = _checked_url(url, self.allow_insecure)
            async with self._turns.turn(origin_of(target), self.max_wait):
                return await self._post(target, secret, event_id, body)
        except OriginBusy as exc:
            return AttemptOutcome(
                False, None, 0, _clip(str(exc)), dt.datetime.now(dt.UTC), busy=True
            )
        except (WebhookUrlError, ValueError) as exc:
            return AttemptOutcome(False, None, 0, _clip(str(exc)), dt.datetime.now(dt.UTC))

    async def _post(
        self, url: httpx.URL, secret: str, event_id: str, body: bytes
    ) -> AttemptOutcome:
        at = dt.datetime.now(dt.UTC)
        started = trio.current_time()
        status: int | None = None
        error: str | None = None
        headers = [
            (name.encode(), value.encode())
            for name, value in signature_headers(secret, event_id, body, at).items()
        ]
        with trio.move_on_after(self.timeout) as deadline:
            try:
                status = await self._pools.post(url, headers, body, self.timeout)
            except HttpFailure as exc:
                error = str(exc)
        elapsed_ms = int((trio.current_time() - started) * 1000)
        if status is None and error is None and deadline.cancelled_caught:
            error = f"no response within {self.timeout:g} s"
        if status is not None:
            if 200 <= status < 300:
                return AttemptOutcome(True, status, elapsed_ms, None, at)
            if 300 <= status < 400:
                error = f"HTTP {status}: redirects are not followed; configure the final URL"
            else:
                error = f"HTTP {status}: the receiver must answer 2xx"
        return AttemptOutcome(False, status, elapsed_ms, _clip(error or "unknown error"), at)


@functools.lru_cache(maxsize=4096)
def _checked_url(url: str, allow_insecure: bool) -> httpx.URL:
    """`check_webhook_url`, parsed once per URL (every event to a receiver has the same URL;
    a refused one raises every time, exceptions are not cached)."""
    return httpx.URL(check_webhook_url(url, allow_insecure=allow_insecure))


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_LENGTH else text[: _MAX_ERROR_LENGTH - 1] + "…"
