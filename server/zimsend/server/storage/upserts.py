"""Single-statement upserts: counters and "seen this before?" marks shared across processes.

`INSERT … ON CONFLICT` exists on both engines but SQLAlchemy builds it from each dialect's own
`insert()`; `insert_for` picks the right one for the session's engine.

The per-report statements are built once per dialect with bind parameters (`cached_statement`):
building an upsert costs more CPU than running it, and a phone report runs several
(`zimsend bench`: report batches were most of the server's CPU end to end). They work on
whole batches (one executemany per batch: `mark_reports_processed`, `add_daily_counts`) and
on the tables, not the ORM classes, so no ORM bulk machinery runs per row.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from .models import DailyAggregate, ProcessedReport, RateLimitBucket
from .shapes import padded_chunks
from .tables import table_of
from .types import utcnow

__all__ = [
    "DayCounts",
    "add_daily_counts",
    "cached_statement",
    "count_in_window",
    "insert_for",
    "mark_report_processed",
    "mark_reports_processed",
]

#: (client id, device id or NO_DEVICE, UTC day) -> (sent, delivered, failed) to add.
DayCounts = Mapping[tuple[str, str, dt.date], Sequence[int]]

_STATEMENTS: dict[tuple[str, str], Any] = {}
#: Rows per `mark_reports_processed` statement: 3 parameters each, under SQLite's oldest limit
#: of 999 bound parameters.
_MARK_CHUNK = 256


def cached_statement(session: Session, name: str, build: Callable[[Session], Any]) -> Any:
    """`build(session)` once per (dialect, name); later calls reuse the statement. `build` must
    use bind parameters for everything that varies."""
    key = (session.get_bind().dialect.name, name)
    stmt = _STATEMENTS.get(key)
    if stmt is None:
        stmt = _STATEMENTS[key] = build(session)
    return stmt


def insert_for(session: Session, model: Any) -> Any:
    """The dialect's `insert(model)`, which has `on_conflict_do_update/do_nothing`."""
    name = session.get_bind().dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"no upsert for {name}")


def count_in_window(
    session: Session, *, client_id: str, scope: str, window_start: dt.datetime, amount: int = 1
) -> int:
    """Add `amount` requests to a client's fixed-window bucket and return the new count.

    Atomic on both engines, so N server replicas enforce one limit (SPEC §8). Old windows are
    garbage: the worker may delete buckets older than a few minutes.
    """
    stmt = (
        insert_for(session, RateLimitBucket)
        .values(client_id=client_id, scope=scope, window_start=window_start, count=amount)
        .on_conflict_do_update(
            index_elements=["client_id", "scope", "window_start"],
            set_={"count": RateLimitBucket.count + amount},
        )
        .returning(RateLimitBucket.count)
    )
    return int(session.execute(stmt).scalar_one())


def mark_report_processed(session: Session, *, device_id: str, report_id: str) -> bool:
    """Record a device report; False if it was already recorded (then apply nothing)."""
    return (device_id, report_id) in mark_reports_processed(session, [(device_id, report_id)])


def mark_reports_processed(
    session: Session, reports: Iterable[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Record (device id, report id) pairs in one statement; returns those recorded now — the
    others were recorded before (apply nothing for them). A pair given twice is recorded once:
    the caller decides which occurrence counts (the first)."""
    table = table_of(ProcessedReport)
    stmt = cached_statement(
        session,
        "mark_reports_processed",
        lambda s: (
            insert_for(s, table)
            .values(
                device_id=bindparam("device_id"),
                report_id=bindparam("report_id"),
                created_at=bindparam("created_at"),
            )
            .on_conflict_do_nothing(index_elements=["device_id", "report_id"])
            .returning(table.c.device_id, table.c.report_id)
        ),
    )
    now = utcnow()
    params = [
        {"device_id": d, "report_id": r, "created_at": now} for d, r in dict.fromkeys(reports)
    ]
    recorded: set[tuple[str, str]] = set()
    # Padded rows (`shapes`): one statement shape per power of two, not one per batch size.
    for chunk in padded_chunks(params, _MARK_CHUNK):
        recorded.update((d, r) for d, r in session.execute(stmt, chunk))
    return recorded


def add_daily_counts(session: Session, counts: DayCounts) -> None:
    """Add to per-day counters (SPEC §4: they outlive message retention), one upsert for the
    whole batch. Rows go in key order, so two transactions never lock them in opposite order."""
    table = table_of(DailyAggregate)

    def build(s: Session) -> Any:
        stmt = insert_for(s, table).values(
            client_id=bindparam("client_id"),
            device_id=bindparam("device_id"),
            day=bindparam("day"),
            sent=bindparam("sent"),
            delivered=bindparam("delivered"),
            failed=bindparam("failed"),
        )
        return stmt.on_conflict_do_update(
            index_elements=["client_id", "day", "device_id"],
            set_={
                name: table.c[name] + stmt.excluded[name]
                for name in ("sent", "delivered", "failed")
            },
        )

    params = [
        {"client_id": c, "device_id": d, "day": day, "sent": s, "delivered": dl, "failed": f}
        for (c, d, day), (s, dl, f) in sorted(counts.items())
    ]
    if params:
        session.execute(cached_statement(session, "add_daily_counts", build), params)
