"""How many queued messages wait ahead of a new one, without counting the queue per request.

Every send response carries `estimated_delivery` (SPEC §3): the new message's due time plus
the messages of the same client (and sandbox flag) at the same or a higher priority that are
due before it, paced by the phones that will share them. Counting those in SQL on every send
costs time in proportion to the backlog — an index-only scan still visits every entry, ~5 ms
for 20,000 queued messages — and was the largest single cost of `SendSms` (`zimsend bench`,
docs/benchmarks.md).

So each server process keeps, per (client, sandbox flag), a snapshot of the queue's due times
by priority, read from the database at most every `SNAPSHOT_SECONDS`, plus the messages this
process accepted since the snapshot was read. The count is then a binary search. What that
costs in accuracy, bounded by the snapshot's age: messages that left the queue since (sent,
cancelled, expired) still count, and other replicas' new messages do not count yet. A snapshot
holds at most `SNAPSHOT_ROWS` messages (highest priority and oldest first); beyond that the
estimate is a lower bound. Messages pinned to one phone (`X-Device-ID`) are left out: they
wait for that phone only, and one that went away must not make every other send look late
(the same snapshot drives the intake's backpressure).

Due times are kept as naive UTC datetimes, read without `UTCDateTime`'s per-row processing
(on SQLite the driver's text parsed by SQLAlchemy's C `DATETIME` conversion): a snapshot is
up to 10,000 rows every second under load, and that processing was half of its read's CPU
(docs/benchmarks.md); naive datetimes also compare faster in the binary searches.

Thread-safe: the accept lane and the OTP service call it from database threads.
"""

from __future__ import annotations

import bisect
import datetime as dt
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from sqlalchemy import Connection, DateTime, bindparam, select, type_coerce
from sqlmodel import col

from zimsend.server.storage import Message, MessageStatus

SNAPSHOT_SECONDS = 1.0
SNAPSHOT_ROWS = 10_000
UTC = dt.UTC

_QUEUE = (
    # DateTime, not the column's UTCDateTime: naive UTC on SQLite (as stored), aware on
    # PostgreSQL (`_naive_utc` then converts each).
    select(col(Message.priority), type_coerce(col(Message.due_at), DateTime()))
    .where(
        col(Message.status) == MessageStatus.QUEUED,
        col(Message.client_id) == bindparam("client_id"),
        col(Message.test) == bindparam("test"),
        col(Message.pinned_device_id).is_(None),
    )
    .order_by(col(Message.priority), col(Message.due_at))
    .limit(SNAPSHOT_ROWS)
)


@dataclass(frozen=True)
class Backlog:
    """What waits ahead of a new message: how many, and the oldest due time among them."""

    count: int
    oldest_due: dt.datetime | None


@dataclass
class _Snapshot:
    read_at: float  # time.monotonic() when the read started
    #: Per priority, the due times in order, naive UTC (see the module docstring).
    due_by_priority: dict[int, list[dt.datetime]] = field(default_factory=dict)


def _naive_utc(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is None else moment.astimezone(UTC).replace(tzinfo=None)


class QueueGauge:
    """Per-process view of each client's queue; see the module docstring."""

    def __init__(self, max_age: float = SNAPSHOT_SECONDS) -> None:
        self._max_age = max_age
        self._lock = threading.Lock()
        self._snapshots: dict[tuple[str, bool], _Snapshot] = {}

    def ahead(
        self,
        connection: Connection,
        client_id: str,
        test: bool,
        priority: int,
        due_at: dt.datetime,
    ) -> Backlog:
        """Queued messages of `client_id` at priority <= `priority` due at or before `due_at`
        (1 is the highest priority). Reads a fresh snapshot through `connection` when needed."""
        key = (client_id, test)
        with self._lock:
            snapshot = self._snapshots.get(key)
        if snapshot is None or time.monotonic() - snapshot.read_at > self._max_age:
            snapshot = self._read(connection, key)
        due = _naive_utc(due_at)
        with self._lock:
            lists = [
                times for p, times in snapshot.due_by_priority.items() if p <= priority and times
            ]
            oldest = min((times[0] for times in lists), default=None)
            return Backlog(
                count=sum(bisect.bisect_right(times, due) for times in lists),
                oldest_due=None if oldest is None else oldest.replace(tzinfo=UTC),
            )

    def record(
        self, client_id: str, test: bool, priority: int, due_ats: Iterable[dt.datetime]
    ) -> None:
        """Count messages this process just queued (until the next snapshot reads them)."""
        with self._lock:
            snapshot = self._snapshots.get((client_id, test))
            if snapshot is None:
                return  # the next read will see them
            times = snapshot.due_by_priority.setdefault(priority, [])
            for due_at in due_ats:
                bisect.insort(times, _naive_utc(due_at))

    def _read(self, connection: Connection, key: tuple[str, bool]) -> _Snapshot:
        snapshot = _Snapshot(read_at=time.monotonic())
        due_by_priority = snapshot.due_by_priority
        result = connection.execute(_QUEUE, {"client_id": key[0], "test": key[1]})
        # Columns, not rows: no Python call per row (the rows come ordered by priority). In
        # parts: fewer rows alive at once, fewer garbage collections.
        for rows in result.partitions(1_000):
            priorities, dues = zip(*rows, strict=True)
            if dues[0].tzinfo is not None:  # PostgreSQL
                dues = tuple(map(_naive_utc, dues))
            start = 0
            for priority in sorted(set(priorities)):
                end = bisect.bisect_right(priorities, priority)
                due_by_priority.setdefault(priority, []).extend(dues[start:end])
                start = end
        with self._lock:
            self._snapshots[key] = snapshot
        return snapshot
