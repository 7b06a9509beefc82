"""Messages — the queue itself (DESIGN "The database is the source of truth") — and the rows
that hang off them: parts, idempotency records, OTPs, inbound SMS.

A message is `queued` until a dispatcher claims it (`claim_due_messages`), then `processing`
until its phone reports; `due_at` is `scheduled_at` or the creation time, so "due" is a single
indexed comparison. Timestamps are aware UTC (`UTCDateTime`).
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import CheckConstraint, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from ..types import JSONValue, UTCDateTime, utcnow

__all__ = [
    "IdempotencyRecord",
    "InboundMessage",
    "Message",
    "MessagePart",
    "MessageStatus",
    "Otp",
]


class MessageStatus(enum.StrEnum):
    """SPEC §3 "Statuses". Stored as plain strings."""

    QUEUED = "queued"
    PROCESSING = "processing"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Message(SQLModel, table=True):
    """One logical SMS, whatever the number of parts it is sent in."""

    __tablename__ = "messages"
    __table_args__ = (
        CheckConstraint("priority BETWEEN 1 AND 5", name="priority_range"),
        # claim_due_messages: WHERE status='queued' AND client_id=? AND test=? AND due_at<=?
        # ORDER BY priority, due_at; and the accept path's count of messages ahead (index-only).
        Index("ix_messages_dispatch", "status", "client_id", "test", "priority", "due_at"),
        # The dispatcher's global scan: the next due_at after now, and the clients whose
        # messages became due since the last scan (only those rows). due_at first: with
        # (status, due_at) SQLite's planner, which has no statistics, took it for the claims.
        Index("ix_messages_due_at_status", "due_at", "status"),
        # The worker's expiry sweep: WHERE status='queued' AND expires_at<=?.
        Index("ix_messages_status_expires_at", "status", "expires_at"),
        # Re-offering `processing` messages to a device after it reconnects.
        Index("ix_messages_device_id_status", "device_id", "status"),
        # History and stats pages, retention.
        Index("ix_messages_client_id_created_at", "client_id", "created_at"),
        # The delivery-report sweep: WHERE status='sent' AND delivery_report_missing_at IS NULL
        # AND sent_at <= ? (flagged rows leave the range it reads).
        Index("ix_messages_report_sweep", "status", "delivery_report_missing_at", "sent_at"),
    )

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    batch_id: str | None = Field(default=None, index=True)
    to: str  # E.164
    body: str = Field(sa_type=Text)
    # For OTP messages `body` is the text with the code masked (history never shows it) and
    # this holds the real text, encrypted (`encrypt_secret`, bound to the message id); it is
    # cleared once the message reaches a final status.
    sealed_body: str | None = Field(default=None, sa_type=Text)
    priority: int = 3  # 1 urgent ... 5 very low; lower is dispatched first
    status: str = MessageStatus.QUEUED
    test: bool = False  # sent with a `zs_test_` key: only a simulated device may take it

    device_id: str | None = Field(default=None, foreign_key="devices.id")
    pinned_device_id: str | None = Field(default=None, foreign_key="devices.id")
    sim_slot: int | None = None
    segments: int = 1  # computed by the server at send time
    encoding: str = "GSM-7"  # "GSM-7" or "UCS-2"
    parts: int | None = None  # parts the phone actually used, once it reports
    attempts: int = 0  # incremented by each resend and each automatic re-route
    # Automatic re-routes since the last resend (a failure before the SMS left a phone put it
    # back in the queue): the per-client `max_send_attempts` counts these plus one.
    reroutes: int = 0

    scheduled_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    due_at: dt.datetime = Field(sa_type=UTCDateTime)
    expires_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    queued_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    processing_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    sent_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    failed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancelled_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)

    error_code: str | None = None  # a FailureCode name (failures.proto)
    error_message: str | None = None
    # When the delivery-report sweep found it `sent` for longer than the server's
    # `delivery_report_timeout_hours` without a report (`delivery_report_missing`).
    delivery_report_missing_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    # The client's `metadata` object (attribute name `meta`: SQLAlchemy reserves `metadata`).
    meta: dict[str, Any] | None = Field(default=None, sa_type=JSONValue)
    webhook_url: str | None = None
    # The id of the request that queued it (Envoy's `x-request-id`, else made by the server):
    # log lines from the accept to the phone and the webhook carry it.
    request_id: str | None = None
    # Quiet hours (docs/compliance.md): the message was accepted inside the recipient's quiet
    # window and its `due_at` moved to the window's end, `held_until`; `hold_reason` says why.
    held_until: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    hold_reason: str | None = None


class MessagePart(SQLModel, table=True):
    """One SMS part as the phone reported it; the message's status is derived from these."""

    __tablename__ = "message_parts"

    message_id: str = Field(foreign_key="messages.id", primary_key=True, ondelete="CASCADE")
    part_index: int = Field(primary_key=True)
    status: str = MessageStatus.PROCESSING
    sent_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    delivered_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    failed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    error_code: str | None = None
    error_message: str | None = None


class IdempotencyRecord(SQLModel, table=True):
    """The first response to an `Idempotency-Key`, replayed for 24 h (SPEC §3 "Beyond")."""

    __tablename__ = "idempotency_records"
    __table_args__ = (UniqueConstraint("client_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    key: str
    operation: str  # the RPC, so one key cannot be replayed against another endpoint
    request_hash: str  # sha256 of the canonical request; a different body is an error
    response: dict[str, Any] = Field(sa_type=JSONValue)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)


class Otp(SQLModel, table=True):
    """A one-time password: the code only as `hash_secret(pepper, code)`."""

    __tablename__ = "otps"
    __table_args__ = (Index("ix_otps_client_id_to_created_at", "client_id", "to", "created_at"),)

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    to: str
    code_hash: str
    message_id: str | None = Field(default=None, foreign_key="messages.id", ondelete="SET NULL")
    expires_at: dt.datetime = Field(sa_type=UTCDateTime)
    attempts_used: int = 0
    max_attempts: int = 3
    verified_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class InboundMessage(SQLModel, table=True):
    """An SMS a phone received and reported; `report_id` makes the report idempotent."""

    __tablename__ = "inbound_messages"
    __table_args__ = (
        UniqueConstraint("device_id", "report_id"),
        Index("ix_inbound_messages_client_id_received_at", "client_id", "received_at"),
    )

    id: str = Field(primary_key=True)
    client_id: str = Field(foreign_key="clients.id")
    device_id: str = Field(foreign_key="devices.id")
    report_id: str
    from_number: str
    body: str = Field(sa_type=Text)
    sim_slot: int | None = None
    received_at: dt.datetime = Field(sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
