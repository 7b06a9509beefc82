"""Counters and idempotency marks: daily aggregates, processed device reports, rate buckets.

These are small rows updated with single atomic statements (upserts), so several server
replicas and workers can share them through the database.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from ..types import UTCDateTime, utcnow

__all__ = ["DailyAggregate", "DeviceSend", "ProcessedReport", "RateLimitBucket"]

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


class DeviceSend(SQLModel, table=True):
    """One message handed to a phone: the ledger its per-SIM send budgets are counted from.

    Written in the claim's transaction and read there (`devicelink.budgets`), so whichever
    replica holds the phone counts what every replica handed it. Rows older than the longest
    window (24 h) are deleted by the claims themselves.
    """

    __tablename__ = "device_sends"
    __table_args__ = (Index("ix_device_sends_device_id_handed_at", "device_id", "handed_at"),)

    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(foreign_key="devices.id", ondelete="CASCADE")
    sim_slot: int = 0  # a message without `sim_slot` counts against slot 0
    handed_at: dt.datetime = Field(sa_type=UTCDateTime)
    parts: int = 1
    message_id: str
