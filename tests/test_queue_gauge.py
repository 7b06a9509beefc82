"""The queue snapshot behind `estimated_delivery` and backpressure (`sending.queue_gauge`),
on SQLite and PostgreSQL: what it counts ahead of a new message, the oldest due time it
reports (aware UTC, whatever zone it is asked in), and what `record` adds until the next
read."""

from __future__ import annotations

import datetime as dt
from typing import Any

from zimsend.server.sending.queue_gauge import QueueGauge
from zimsend.server.storage import Client, Database, Device, Message, MessageStatus

UTC = dt.UTC
HARARE = dt.timezone(dt.timedelta(hours=2))
T0 = dt.datetime(2026, 12, 5, 12, 0, 0, 250_000, tzinfo=UTC)


def _seed(db: Database) -> None:
    """Client c: priority 1 and 3 messages due one second apart, plus messages the gauge
    must not count (pinned to a phone, sandbox, sent, another client)."""
    with db.write() as session:
        session.add_all([Client(id="c", name="c"), Client(id="other", name="other")])
        session.flush()
        session.add(Device(id="d", client_id="c", name="d", password_hash="h"))
        session.flush()
        rows: list[tuple[str, int, dt.datetime, dict[str, Any]]] = [
            (f"p3_{i}", 3, T0 + dt.timedelta(seconds=i), {}) for i in range(5)
        ]
        rows += [(f"p1_{i}", 1, T0 + dt.timedelta(seconds=i, microseconds=1), {}) for i in range(2)]
        rows += [
            ("pinned", 1, T0 - dt.timedelta(hours=1), {"pinned_device_id": "d"}),
            ("sandbox", 1, T0 - dt.timedelta(hours=1), {"test": True}),
            ("sent", 1, T0 - dt.timedelta(hours=1), {"status": MessageStatus.SENT}),
        ]
        for mid, priority, due, extra in rows:
            session.add(
                Message(id=mid, client_id="c", to="+1", body="x", priority=priority, due_at=due)
            )
            for name, value in extra.items():
                setattr(session.get(Message, mid), name, value)
        session.add(Message(id="o", client_id="other", to="+1", body="x", due_at=T0))


def test_counts_what_is_due_ahead_at_the_same_or_a_higher_priority(db: Database) -> None:
    _seed(db)
    gauge = QueueGauge()
    with db.session() as session:
        connection = session.connection()
        # Priority 3 at T0 + 2 s: p3_0..p3_2 and both p1 (due at T0 + 0/1 s and 1 µs).
        backlog = gauge.ahead(connection, "c", False, 3, T0 + dt.timedelta(seconds=2))
        assert backlog.count == 5
        assert backlog.oldest_due == T0
        assert backlog.oldest_due.tzinfo is UTC
        # The same instant asked in another zone.
        same = gauge.ahead(
            connection, "c", False, 3, (T0 + dt.timedelta(seconds=2)).astimezone(HARARE)
        )
        assert same == backlog
        # Priority 1 sees only priority 1; exactly at a due time counts it.
        urgent = gauge.ahead(connection, "c", False, 1, T0 + dt.timedelta(microseconds=1))
        assert (urgent.count, urgent.oldest_due) == (1, T0 + dt.timedelta(microseconds=1))
        assert gauge.ahead(connection, "c", False, 1, T0).count == 0
        # The sandbox and other clients are queues of their own; pinned and sent messages
        # never count.
        assert gauge.ahead(connection, "c", True, 5, T0 + dt.timedelta(days=1)).count == 1
        assert gauge.ahead(connection, "other", False, 5, T0).count == 1
        assert gauge.ahead(connection, "nobody", False, 5, T0).oldest_due is None


def test_recorded_messages_count_until_the_next_read(db: Database) -> None:
    _seed(db)
    gauge = QueueGauge(max_age=3600)
    with db.session() as session:
        connection = session.connection()
        before = gauge.ahead(connection, "c", False, 5, T0 + dt.timedelta(hours=1))
        early = (T0 - dt.timedelta(minutes=5)).astimezone(HARARE)
        gauge.record("c", False, 4, [early, T0 + dt.timedelta(hours=2)])
        after = gauge.ahead(connection, "c", False, 5, T0 + dt.timedelta(hours=1))
        assert after.count == before.count + 1
        assert after.oldest_due == early
        assert after.oldest_due.tzinfo is UTC
        assert gauge.ahead(connection, "c", False, 3, T0 + dt.timedelta(hours=1)) == before
