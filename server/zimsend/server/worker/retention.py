"""90-day retention (SPEC §4): full messages are kept `retention_days`, then only the per-day
aggregates remain.

Nothing needs folding here: `devicelink.transitions` adds every status change to `DailyAggregate`
as it happens, and `sending.stats` reads days inside retention from the messages and older days
from the aggregates. This job therefore only deletes. Its cutoff is the *start of the UTC day*
on which the retention window begins (`sending.one_message.retention_start`): the stats count that
first day from messages, so none of that day's messages may go before the whole day has left
the window.

What goes, older than the cutoff: messages (their parts cascade; OTPs keep a NULL link), inbound
SMS, OTPs, finished outbox events (their delivery logs cascade) and processed-report marks.
Housekeeping with shorter lives: idempotency records after 2 days (they replay for 24 h) and
rate-limit windows after 1 day. Each table is purged in batches, one short transaction each, so
the SQLite write lock is never held for long; several workers may run it at once.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from sqlalchemy import CursorResult, delete, select
from sqlmodel import col

from zimsend.server.storage import (
    Database,
    IdempotencyRecord,
    InboundMessage,
    Message,
    Otp,
    OutboxEvent,
    OutboxStatus,
    ProcessedReport,
    RateLimitBucket,
)

__all__ = ["purge_expired", "retention_cutoff"]

BATCH: Final = 1000
IDEMPOTENCY_KEEP: Final = dt.timedelta(days=2)
RATE_WINDOW_KEEP: Final = dt.timedelta(days=1)


def retention_cutoff(now: dt.datetime, retention_days: int) -> dt.datetime:
    """Midnight UTC of the first day still inside retention."""
    first_day = (now - dt.timedelta(days=retention_days)).astimezone(dt.UTC).date()
    return dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC)


def purge_expired(db: Database, now: dt.datetime, *, retention_days: int) -> dict[str, int]:
    """Delete what retention no longer keeps; returns rows deleted per table."""
    cutoff = retention_cutoff(now, retention_days)
    plan: list[tuple[str, Any, Any, list[Any]]] = [
        ("otps", Otp, Otp.id, [col(Otp.created_at) < cutoff]),
        ("messages", Message, Message.id, [col(Message.created_at) < cutoff]),
        (
            "inbound_messages",
            InboundMessage,
            InboundMessage.id,
            [col(InboundMessage.created_at) < cutoff],
        ),
        (
            "outbox_events",
            OutboxEvent,
            OutboxEvent.id,
            [
                col(OutboxEvent.created_at) < cutoff,
                col(OutboxEvent.status).in_([OutboxStatus.DELIVERED, OutboxStatus.FAILED]),
            ],
        ),
        (
            "processed_reports",
            ProcessedReport,
            ProcessedReport.report_id,
            [col(ProcessedReport.created_at) < cutoff],
        ),
        (
            "idempotency_records",
            IdempotencyRecord,
            IdempotencyRecord.id,
            [col(IdempotencyRecord.created_at) < now - IDEMPOTENCY_KEEP],
        ),
        (
            "rate_limit_buckets",
            RateLimitBucket,
            RateLimitBucket.window_start,
            [col(RateLimitBucket.window_start) < now - RATE_WINDOW_KEEP],
        ),
    ]
    counts: dict[str, int] = {}
    for name, model, key, conditions in plan:
        counts[name] = _purge(db, model, key, conditions)
    return counts


def _purge(db: Database, model: Any, key: Any, conditions: list[Any]) -> int:
    total = 0
    while True:
        batch = select(col(key)).where(*conditions).limit(BATCH).scalar_subquery()
        with db.write() as session:
            result = session.execute(
                delete(model)
                .where(col(key).in_(batch), *conditions)
                .execution_options(synchronize_session=False)
            )
            assert isinstance(result, CursorResult)  # a DELETE's result
            deleted = int(result.rowcount or 0)
        total += deleted
        if deleted < BATCH:
            return total
