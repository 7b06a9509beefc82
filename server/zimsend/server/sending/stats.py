"""Aggregated counts per UTC day (SPEC.md §4 `GET /v1/sms/stats`).

Two sources, never both for the same day:

- Days inside retention (from the day the retention window starts, UTC) are counted from the
  messages themselves, grouped by the day each was created: `sent` counts messages now `sent`
  or `delivered` (DailyStats: "including later delivered"), `delivered` and `failed` their own.
- Older days, whose messages the worker has deleted, come from `DailyAggregate` rows, summed
  over devices (`NO_DEVICE` included). Their `sent` is read with the same meaning.

So stats keep answering for a day after its messages are gone, and a day is never counted
twice whether the aggregates are written incrementally or when messages are purged.
`pending` (queued + processing) only exists for live messages, so it comes from messages.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from zimsend.server.config import Settings
from zimsend.server.storage import DailyAggregate, Database, Message, MessageStatus, utcnow

from .one_message import retention_start

DEFAULT_PERIOD = dt.timedelta(days=30)
_SENT = (MessageStatus.SENT, MessageStatus.DELIVERED)
_PENDING = (MessageStatus.QUEUED, MessageStatus.PROCESSING)


@dataclass
class DayCounts:
    sent: int = 0
    delivered: int = 0
    failed: int = 0


@dataclass
class Stats:
    start: dt.datetime
    end: dt.datetime
    days: dict[dt.date, DayCounts] = field(default_factory=dict)
    pending: int = 0

    @property
    def total_sent(self) -> int:
        return sum(d.sent for d in self.days.values())

    @property
    def delivered(self) -> int:
        return sum(d.delivered for d in self.days.values())

    @property
    def failed(self) -> int:
        return sum(d.failed for d in self.days.values())

    @property
    def delivery_rate(self) -> float:
        """delivered / total_sent in percent, 2 decimals; 0 when nothing was sent."""
        sent = self.total_sent
        return round(self.delivered * 100 / sent, 2) if sent else 0.0

    def by_day(self) -> list[tuple[dt.date, DayCounts]]:
        """Days with traffic, oldest first."""
        return sorted((day, c) for day, c in self.days.items() if c.sent or c.delivered or c.failed)


def default_period(
    start: dt.datetime | None, end: dt.datetime | None, now: dt.datetime
) -> tuple[dt.datetime, dt.datetime]:
    """`to_date` defaults to now, `from_date` to 30 days before `to_date`."""
    end = end or now
    return start or end - DEFAULT_PERIOD, end


def compute(
    db: Database,
    settings: Settings,
    client_id: str,
    start: dt.datetime,
    end: dt.datetime,
    device_id: str | None,
) -> Stats:
    now = utcnow()
    first_live_day = retention_start(settings, now).date()
    out = Stats(start, end)
    with db.session() as session:
        live_start = max(start, retention_start(settings, now))
        if live_start <= end:
            _from_messages(session, out, client_id, live_start, end, device_id)
        if start.date() < first_live_day:
            last_day = min(end.date(), first_live_day - dt.timedelta(days=1))
            _from_aggregates(session, out, client_id, start.date(), last_day, device_id)
    return out


def _day_of(session: Session, column: Any) -> Any:
    """The UTC calendar day of a timestamp column, in SQL, on either engine."""
    if session.get_bind().dialect.name == "postgresql":
        return func.date(func.timezone("UTC", column))
    return func.date(column)  # SQLite stores UTC text: date() reads its first ten characters


def _from_messages(
    session: Session,
    out: Stats,
    client_id: str,
    start: dt.datetime,
    end: dt.datetime,
    device_id: str | None,
) -> None:
    day = _day_of(session, Message.created_at).label("day")
    conditions: list[Any] = [
        Message.client_id == client_id,
        Message.created_at >= start,
        Message.created_at <= end,
    ]
    if device_id:
        conditions.append(Message.device_id == device_id)
    rows = session.exec(
        select(day, Message.status, func.count()).where(*conditions).group_by(day, Message.status)
    ).all()
    for value, status, count in rows:
        counts = out.days.setdefault(_as_date(value), DayCounts())
        if status in _SENT:
            counts.sent += count
        if status == MessageStatus.DELIVERED:
            counts.delivered += count
        elif status == MessageStatus.FAILED:
            counts.failed += count
        elif status in _PENDING:
            out.pending += count


def _from_aggregates(
    session: Session,
    out: Stats,
    client_id: str,
    first: dt.date,
    last: dt.date,
    device_id: str | None,
) -> None:
    conditions: list[Any] = [
        DailyAggregate.client_id == client_id,
        DailyAggregate.day >= first,
        DailyAggregate.day <= last,
    ]
    if device_id:
        conditions.append(DailyAggregate.device_id == device_id)
    rows = session.exec(
        select(
            col(DailyAggregate.day),
            func.sum(DailyAggregate.sent),
            func.sum(DailyAggregate.delivered),
            func.sum(DailyAggregate.failed),
        )
        .where(*conditions)
        .group_by(col(DailyAggregate.day))
    ).all()
    sums: dict[dt.date, DayCounts] = defaultdict(DayCounts)
    for value, sent, delivered, failed in rows:
        counts = sums[_as_date(value)]
        counts.sent += int(sent or 0)
        counts.delivered += int(delivered or 0)
        counts.failed += int(failed or 0)
    out.days.update(sums)


def _as_date(value: Any) -> dt.date:
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    return dt.date.fromisoformat(str(value)[:10])
