"""Single-statement upserts: counters and "seen this before?" marks shared across processes.

`INSERT … ON CONFLICT` exists on both engines but SQLAlchemy builds it from each dialect's own
`insert()`; `insert_for` picks the right one for the session's engine.

The per-report statements are built once per dialect with bind parameters (`_cached`):
building an upsert costs more CPU than running it, and a phone report runs several
(`zimsend bench`: report batches were most of the server's CPU end to end).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session

from .models import ProcessedReport, RateLimitBucket
from .types import utcnow

__all__ = ["cached_statement", "count_in_window", "insert_for", "mark_report_processed"]

_STATEMENTS: dict[tuple[str, str], Any] = {}


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
    stmt = cached_statement(session, "mark_report_processed", lambda s: (
        insert_for(s, ProcessedReport)
        .values(device_id=bindparam("device_id"), report_id=bindparam("report_id"),
                created_at=bindparam("created_at"))
        .on_conflict_do_nothing(index_elements=["device_id", "report_id"])
        .returning(ProcessedReport.report_id)
    ))
    params = {"device_id": device_id, "report_id": report_id, "created_at": utcnow()}
    return session.execute(stmt, params).first() is not None
