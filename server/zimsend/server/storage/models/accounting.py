"""Counters and idempotency marks: daily aggregates, processed device reports, rate buckets.

These are small rows updated with single atomic statements (upserts), so several server
replicas and workers can share them through the database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from ..types import UTCDateTime, utcnow

__all__ = ["DailyAggregate", "ProcessedReport", "RateLimitBucket"]

NO_DEVICE = ""


class DailyAggregate(SQLModel, table=True):
    """Per-day counts that outlive the 90-day message retention (SPEC §4).

    `device_id` is `NO_DEVICE` (the empty string), not NULL, for messages no device took (e.g.
    expired): NULLs never collide in a unique constraint, and the row must be unique to be
    upserted. A client's totals for a day are the sum over its devices.
    """

    __tablename__ = "daily_aggregates"
    __table_args__ = (UniqueConstraint("client_id", "day", "device_id"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    device_id: str = NO_DEVICE
    day: dt.date  # UTC day
    sent: int = 0
    delivered: int = 0
    failed: int = 0


class ProcessedReport(SQLModel, table=True):
    """A device report already applied: the same report twice changes nothing (DESIGN)."""

    __tablename__ = "processed_reports"

    device_id: str = Field(foreign_key="devices.id", primary_key=True)
    report_id: str = Field(primary_key=True)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class RateLimitBucket(SQLModel, table=True):
    """Requests counted in a fixed window, shared by all replicas (`count_in_window`).

    No foreign key on purpose: this is the hottest counter, written on every API request.
    """

    __tablename__ = "rate_limit_buckets"

    client_id: str = Field(primary_key=True)
    scope: str = Field(primary_key=True)  # "api", or a tighter limit's name
    window_start: dt.datetime = Field(sa_type=UTCDateTime, primary_key=True)
    count: int = 0
