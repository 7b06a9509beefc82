"""Who owns what: clients, their API keys and their phones (devices).

Every other table carries a `client_id`; every query is scoped by it (DESIGN "Security
baseline"). Identifiers are the public prefixed ids (`client_…`, `key_…`, `device_…`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from ..types import JSONValue, UTCDateTime, utcnow

__all__ = ["ApiKey", "Client", "Device"]


class Client(SQLModel, table=True):
    """A tenant: one application (or company) sending through its own phones."""

    __tablename__ = "clients"

    id: str = Field(primary_key=True)
    name: str
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # None means the server-wide `rate_limit_per_minute` setting.
    rate_limit_per_minute: int | None = None
    # Dispatch attempts of one message before a failure that happened before the SMS left a
    # phone is final; None means the server-wide `max_send_attempts` setting.
    max_send_attempts: int | None = None


class ApiKey(SQLModel, table=True):
    """An API key, stored only as `hash_secret(pepper, key)`; shown once at creation."""

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_key_hash", "key_hash", unique=True),)

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id", index=True)
    name: str
    key_hash: str
    last4: str
    # A `zs_test_` key: its messages go to the client's simulated device only.
    test: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)


class Device(SQLModel, table=True):
    """A phone (or the simulated device behind test keys) and its live state.

    Presence columns (`online`, `connection_id`, `replica_id`, `last_seen_at`) are written by
    the server replica that holds the phone's stream; `connection_id` changes on every
    reconnect, so a stale replica's "disconnected" update can be made conditional on it.
    """

    __tablename__ = "devices"
    __table_args__ = (Index("ix_devices_client_id_online", "client_id", "online"),)

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    name: str
    password_hash: str
    enabled: bool = True
    is_simulated: bool = False
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    deleted_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)

    # Presence.
    online: bool = False
    connection_id: str | None = None
    replica_id: str | None = None
    connected_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    ip_address: str | None = None

    # What the phone reports (hello and heartbeats).
    battery: int | None = None  # percent
    charging: bool | None = None
    signal: int | None = None  # bars, 0-4
    app_version: str | None = None
    android_version: str | None = None
    model: str | None = None
    phone_number: str | None = None
    sims: list[dict[str, Any]] = Field(default_factory=list, sa_type=JSONValue)
    #: DeviceCapabilities of its last hello (backend, delivery_reports, inbound_sms); empty
    #: when the agent did not announce them (an older agent).
    capabilities: dict[str, Any] = Field(default_factory=dict, sa_type=JSONValue)
    #: NetworkRegistration name of the last heartbeat ("home", "roaming", ...); None: unknown.
    network: str | None = None
    #: Why the connected phone cannot send (last heartbeat); None while it can. While set the
    #: device counts as offline for sending (`presence.is_online`).
    cannot_send_reason: str | None = None

    # Pacing. None means the server default (`default_send_interval_ms`) / no cap.
    send_interval_ms: int | None = None
    daily_cap: int | None = None
    last_send_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Messages handed to the phone on `sent_day` (a UTC date); reset when the day changes.
    sent_day: dt.date | None = None
    sent_on_day: int = 0
    # Send budget of each SIM slot, in SMS parts per 60 s / hour / 24 h (`device_sends`);
    # None: the server default (`default_parts_per_*`); 0: no limit.
    parts_per_minute: int | None = None
    parts_per_hour: int | None = None
    parts_per_day: int | None = None
    # Given nothing until then: a send-limit failure, or a failure before sending.
    cooling_down_until: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
