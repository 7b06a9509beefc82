"""Webhook endpoints, the transactional outbox of events, and the log of delivery attempts.

An event is written in the same transaction as the state change that causes it (a message
becoming `delivered` writes its `sms.delivered` row), so an event is never lost nor invented.
The worker claims due rows (`status`, `next_attempt_at`, `locked_until`), delivers, and records
each HTTP attempt in `WebhookDelivery`, which `GET /v1/webhooks/logs` pages through.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from ..types import JSONValue, UTCDateTime, utcnow

__all__ = [
    "OutboxEvent",
    "OutboxStatus",
    "WebhookDelivery",
    "WebhookEndpoint",
    "message_id_of",
]


class OutboxStatus(enum.StrEnum):
    PENDING = "pending"
    DELIVERING = "delivering"
    DELIVERED = "delivered"
    FAILED = "failed"


class WebhookEndpoint(SQLModel, table=True):
    """A client's webhook receiver.

    `secret_encrypted` is `encrypt_secret(pepper, secret, bound_to=id)`: the worker needs the
    raw `whsec_…` secret to sign deliveries, so it cannot be stored as a hash; encrypting it
    under a pepper-derived key keeps a leaked database from letting anyone forge webhooks.
    """

    __tablename__ = "webhook_endpoints"

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id", index=True)
    url: str
    events: list[str] = Field(default_factory=list, sa_type=JSONValue)
    secret_encrypted: str
    status: str = "active"  # "active" or "disabled"
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    deleted_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)


class OutboxEvent(SQLModel, table=True):
    """One event (`sms.delivered`, `device.connected`, ...) waiting for, or past, delivery.

    `payload` is the `data` object of the webhook body. `webhook_url` is a per-message override
    (SPEC §3 `webhook_url`); without it the event goes to the client's endpoints subscribed to
    `event_type`. Retries reuse the same `id` as `event_id`.
    """

    __tablename__ = "outbox_events"
    __table_args__ = (
        Index("ix_outbox_events_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_outbox_events_client_id_created_at", "client_id", "created_at"),
        Index("ix_outbox_events_client_id_message_id", "client_id", "message_id"),
    )

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    event_type: str
    payload: dict[str, Any] = Field(sa_type=JSONValue)
    webhook_url: str | None = None
    status: str = OutboxStatus.PENDING
    attempts: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_attempt_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # A worker's lease: another worker may take the row over once `locked_until` has passed.
    locked_until: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    claimed_by: str | None = None
    delivered_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_type=Text)
    # The request id of the message the event is about (None for other events): the worker's
    # delivery log line carries it.
    request_id: str | None = None
    # The message the event is about, `message_id_of(payload)`: `GET /v1/webhooks/logs
    # ?message_id=` lists a message's own deliveries through it (migration 0009).
    message_id: str | None = None


def message_id_of(payload: dict[str, Any]) -> str | None:
    """The message an event is about: its data's `message_id` (SPEC §7 `sms.*` events, and
    `otp.verified` when the code was sent by SMS); None for device, inbound (`sms.received`
    names its inbound `id`), opt-out and test events. Migration 0009 backfills by this rule."""
    value = payload.get("message_id")
    return value if isinstance(value, str) and value else None


class WebhookDelivery(SQLModel, table=True):
    """One HTTP attempt to deliver one event to one URL (the webhook logs)."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_client_id_created_at", "client_id", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    event_id: str = Field(foreign_key="outbox_events.id", index=True, ondelete="CASCADE")
    webhook_id: str | None = Field(default=None, foreign_key="webhook_endpoints.id")
    event_type: str
    url: str
    attempt: int
    success: bool
    response_status: int | None = None
    response_time_ms: int | None = None
    error: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
