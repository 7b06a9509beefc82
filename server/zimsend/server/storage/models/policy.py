"""A client's sending policy and its opt-out (suppression) list (issue 16 items 3, 4).

`ClientPolicy` holds what `GET /v1/settings` shows beyond the clients row: stop and start
keywords, the OTP exemption and quiet hours. A client without a row has the defaults
(`zimsend.server.policy.defaults`), so no row is written until a client changes something.

`OptOut` is one number the client must not send to, keyed by (client, E.164 number): the send
path looks a request's recipients up by that key, and an inbound STOP upserts it.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from ..types import JSONValue, UTCDateTime, utcnow

__all__ = ["ClientPolicy", "OptOut"]


class ClientPolicy(SQLModel, table=True):
    """Per-client sending policy; None in a column means the default."""

    __tablename__ = "client_policies"

    client_id: str = Field(foreign_key="clients.id", primary_key=True)
    #: Stop / start keywords as the client wrote them; None: the defaults.
    stop_keywords: list[str] | None = Field(default=None, sa_type=JSONValue)
    start_keywords: list[str] | None = Field(default=None, sa_type=JSONValue)
    #: OTP codes still reach opted-out numbers.
    exempt_otp: bool = False
    quiet_hours_enabled: bool = False
    #: "HH:MM", the recipient's local time.
    quiet_hours_start: str = "21:00"
    quiet_hours_end: str = "08:00"
    #: IANA zone for numbers whose country has several; None: UTC.
    quiet_hours_time_zone: str | None = None
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class OptOut(SQLModel, table=True):
    """A number that opted out of the client's messages."""

    __tablename__ = "opt_outs"
    __table_args__ = (Index("ix_opt_outs_client_id_created_at", "client_id", "created_at"),)

    client_id: str = Field(foreign_key="clients.id", primary_key=True)
    phone_number: str = Field(primary_key=True)  # E.164
    #: "keyword" (an inbound STOP) or "api".
    source: str
    #: The inbound text that matched, trimmed, when `source` is "keyword".
    keyword: str | None = None
    device_id: str | None = None
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
