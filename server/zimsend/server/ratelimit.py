"""The per-client request limit of SPEC.md §8: 100 requests a minute by default, a setting per
client (`Client.rate_limit_per_minute`), holding across every server replica.

Why batched: counting in the database is what makes the limit hold across replicas, but one
write per request would put a write lock on the hottest path (SQLite has one writer). So each
replica admits against `known + pending` — the window's total as last read from the database
plus the requests it admitted since — and flushes its pending counts for all clients in one
transaction every `FLUSH_INTERVAL` seconds, reading the new totals back. Windows are fixed
minutes. With R replicas the limit can be overshot by at most what R-1 other replicas admit
within one flush interval; a single replica never overshoots: the counts being written stay
counted (`_flushing`) until the totals that include them are read back, and a window's first
database read never replaces a total a flush already brought back (issue 12: 102 of 100 were
admitted while a flush was in flight).

Refusals are `RATE_LIMIT_EXCEEDED` (HTTP 429) with `Retry-After` (seconds to the next window)
and a `RetryInfo`; every answer carries the IETF `RateLimit-Policy` / `RateLimit` headers
(REST: response headers; gRPC: trailing metadata, or initial metadata with a refusal; `rpc`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from zimsend.server import logs
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.storage import Client, Database, RateLimitBucket, count_in_window, utcnow

FLUSH_INTERVAL = 0.1
LIMIT_CACHE_SECONDS = 10.0
SCOPE = "api"
log = logs.get("zimsend.ratelimit")

WindowKey = tuple[str, dt.datetime]  # (client_id, window start)


@dataclass(frozen=True)
class Admission:
    limit: int
    remaining: int
    reset_seconds: int

    def headers(self) -> tuple[tuple[str, str], ...]:
        return (
            ("ratelimit-policy", f'"api";q={self.limit};w=60'),
            ("ratelimit", f'"api";r={self.remaining};t={self.reset_seconds}'),
        )


class ClientRateLimiter:
    def __init__(
        self,
        db: Database,
        default_limit: int,
        run_db: Callable[..., Awaitable[Any]],
    ) -> None:
        self._db = db
        self._default_limit = default_limit
        self._run_db = run_db  # ServerState.db_call
        self._known: dict[WindowKey, int] = {}
        self._pending: defaultdict[WindowKey, int] = defaultdict(int)
        #: Admitted, being written by the flush in progress, not yet in `_known`.
        self._flushing: dict[WindowKey, int] = {}
        self._limits: dict[str, tuple[int, float]] = {}
        self._flusher: asyncio.Task[None] | None = None
        #: (minutes since the epoch, that minute's start) of the last admission.
        self._minute: tuple[int, dt.datetime] = (-1, dt.datetime.min.replace(tzinfo=dt.UTC))

    async def admit(self, client_id: str) -> Admission:
        """Count one request for `client_id`, or raise RATE_LIMIT_EXCEEDED."""
        now = time.time()
        minute = int(now // 60)
        if minute != self._minute[0]:
            self._minute = (minute, dt.datetime.fromtimestamp(minute * 60, dt.UTC))
        window = self._minute[1]  # the window's start, as stored: built once a minute
        reset = max(1, math.ceil(60 - (now - minute * 60)))
        cached = self._limits.get(client_id)
        if cached is not None and time.monotonic() - cached[1] < LIMIT_CACHE_SECONDS:
            limit = cached[0]  # no coroutine for the common case
        else:
            limit = await self._limit(client_id)
        key = (client_id, window)
        if key not in self._known:
            # First request of this window on this replica: learn what the others counted.
            # Several first requests may read at once, and a flush may have brought a newer
            # total back meanwhile: the first value in stays.
            counted = await self._run_db(self._read_count, key)
            self._known.setdefault(key, counted)
        used = self._known[key] + self._flushing.get(key, 0) + self._pending[key]
        if used >= limit:
            error = ApiError(
                ErrorCode.RATE_LIMIT_EXCEEDED,
                f"Rate limit of {limit} requests per minute exceeded for this client; "
                f"retry in {reset} s.",
                retry_after_seconds=reset,
            )
            error.extra_headers.extend(Admission(limit, 0, reset).headers())
            raise error
        self._pending[key] += 1
        self._schedule_flush()
        return Admission(limit, max(0, limit - used - 1), reset)

    async def _limit(self, client_id: str) -> int:
        cached = self._limits.get(client_id)
        if cached and time.monotonic() - cached[1] < LIMIT_CACHE_SECONDS:
            return cached[0]
        limit = await self._run_db(self._read_limit, client_id)
        self._limits[client_id] = (limit, time.monotonic())
        return int(limit)

    def _read_limit(self, client_id: str) -> int:
        with self._db.session() as session:
            client = session.get(Client, client_id)
        if client is not None and client.rate_limit_per_minute:
            return int(client.rate_limit_per_minute)
        return self._default_limit

    def _read_count(self, key: WindowKey) -> int:
        with self._db.session() as session:
            bucket = session.get(RateLimitBucket, (key[0], SCOPE, key[1]))
        return bucket.count if bucket is not None else 0

    def _schedule_flush(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush_soon())

    async def _flush_soon(self) -> None:
        await asyncio.sleep(FLUSH_INTERVAL)
        batch = {k: v for k, v in self._pending.items() if v}
        self._pending.clear()
        if not batch:
            return
        self._flushing = batch
        try:
            totals = await self._run_db(self._write, batch)
        except Exception as exc:  # noqa: BLE001 - counting must never fail a request
            logs.failure(log, "ratelimit.flush_failed", exc)
            self._flushing = {}
            for key, amount in batch.items():
                self._pending[key] += amount
            return  # the next admission schedules another try
        current = utcnow().replace(second=0, microsecond=0)
        self._known = {k: v for k, v in {**self._known, **totals}.items() if k[1] >= current}
        self._flushing = {}
        self._flusher = None  # this task is ending: let admissions made meanwhile schedule anew
        if any(self._pending.values()):
            self._schedule_flush()

    def _write(self, batch: dict[WindowKey, int]) -> dict[WindowKey, int]:
        with self._db.write() as session:
            return {
                (client_id, window): count_in_window(
                    session, client_id=client_id, scope=SCOPE, window_start=window, amount=amount
                )
                for (client_id, window), amount in sorted(batch.items())
            }
