"""ZimSend's storage: SQLModel tables, Alembic migrations and the few atomic primitives the
server and the worker share, on SQLite (the embedded default) and PostgreSQL.

    db = Database.from_settings(settings)   # or Database.from_url("postgresql://…")
    db.migrate()
    with db.write() as session:             # BEGIN IMMEDIATE on SQLite
        messages = claim_due_messages(session, client_id=…, device_id=…, limit=5, now=utcnow())

The API is synchronous (one layer for the asyncio server and the trio worker; see
`database`). Datetimes in and out are aware UTC.
"""

from .claims import ClaimedMessage, claim_due_messages
from .database import Database, normalize_url
from .models import (
    NO_DEVICE,
    ApiKey,
    Client,
    ClientPolicy,
    DailyAggregate,
    Device,
    DeviceSend,
    IdempotencyRecord,
    InboundMessage,
    Message,
    MessagePart,
    MessageStatus,
    OptOut,
    Otp,
    OutboxEvent,
    OutboxStatus,
    ProcessedReport,
    RateLimitBucket,
    WebhookDelivery,
    WebhookEndpoint,
    metadata,
)
from .scoping import get_for_client
from .types import UTCDateTime, utcnow
from .upserts import cached_statement, count_in_window, insert_for, mark_report_processed

__all__ = [
    "NO_DEVICE",
    "ApiKey",
    "ClaimedMessage",
    "Client",
    "ClientPolicy",
    "DailyAggregate",
    "Database",
    "Device",
    "DeviceSend",
    "IdempotencyRecord",
    "InboundMessage",
    "Message",
    "MessagePart",
    "MessageStatus",
    "OptOut",
    "Otp",
    "OutboxEvent",
    "OutboxStatus",
    "ProcessedReport",
    "RateLimitBucket",
    "UTCDateTime",
    "WebhookDelivery",
    "WebhookEndpoint",
    "cached_statement",
    "claim_due_messages",
    "count_in_window",
    "get_for_client",
    "insert_for",
    "mark_report_processed",
    "metadata",
    "normalize_url",
    "utcnow",
]
