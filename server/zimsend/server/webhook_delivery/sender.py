"""`WebhookSender`: one signed POST of one event to one URL, with one overall deadline.

Why an overall deadline (`trio.move_on_after`) on top of httpx's timeouts: httpx applies its
timeout to each phase (connect, write, each read), so a receiver trickling bytes could hold an
attempt for many times 5 s. SPEC §7 says the receiver must answer 2xx within 5 s, full stop.

Why `stream()` and a capped read: the response body is not needed, and a hostile receiver could
send gigabytes. Success is decided by the status line alone; up to 64 KiB is drained so the
connection can be reused, the rest is dropped with the connection.

An attempt never raises for anything the receiver does: the outcome — status, time, error text
without secrets — is returned for the webhook logs. Cancellation (worker shutdown) propagates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

import httpx
import trio

from .signing import signature_headers
from .transport import ForbiddenAddress, guarded_transport
from .urls import WebhookUrlError, check_webhook_url

__all__ = ["AttemptOutcome", "WebhookSender"]

_DRAIN_LIMIT: Final = 64 * 1024
_MAX_ERROR_LENGTH: Final = 500


@dataclass(frozen=True)
class AttemptOutcome:
    """What one HTTP attempt gave. `status` is None when no response arrived."""

    success: bool
    status: int | None
    elapsed_ms: int
    error: str | None
    at: dt.datetime


class WebhookSender:
    """Owns the httpx client (use `async with`). `allow_insecure` is the development setting:
    plain HTTP and private addresses allowed."""

    def __init__(
        self,
        *,
        timeout: float,
        allow_insecure: bool,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.timeout = timeout
        self.allow_insecure = allow_insecure
        self._client = httpx.AsyncClient(
            transport=transport or guarded_transport(allow_private=allow_insecure),
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout),
        )

    async def __aenter__(self) -> WebhookSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.aclose()

    async def post(self, url: str, *, secret: str, event_id: str, body: bytes) -> AttemptOutcome:
        """POST `body` to `url`, signed with `secret`; see the module docstring."""
        at = dt.datetime.now(dt.UTC)
        started = trio.current_time()
        status: int | None = None
        error: str | None = None
        try:
            check_webhook_url(url, allow_insecure=self.allow_insecure)
            headers = signature_headers(secret, event_id, body, at)
        except (WebhookUrlError, ValueError) as exc:
            return AttemptOutcome(False, None, 0, _clip(str(exc)), at)
        with trio.move_on_after(self.timeout) as deadline:
            try:
                async with self._client.stream("POST", url, content=body, headers=headers) as rsp:
                    status = rsp.status_code
                    await _drain(rsp)
            except httpx.HTTPError as exc:
                error = _describe(exc)
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


async def _drain(response: httpx.Response) -> None:
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > _DRAIN_LIMIT:
            return


def _describe(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    if isinstance(cause, ForbiddenAddress) or str(exc).startswith("refused to connect"):
        return str(exc)
    if isinstance(exc, httpx.TimeoutException):
        return f"timeout ({type(exc).__name__})"
    if isinstance(exc, httpx.ConnectError):
        return f"connection failed: {exc}" if str(exc) else "connection failed"
    if isinstance(exc, httpx.RemoteProtocolError):
        return f"invalid HTTP response: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_LENGTH else text[: _MAX_ERROR_LENGTH - 1] + "…"
