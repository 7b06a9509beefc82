"""The tables, one module per concern. Importing this package registers them all on
`SQLModel.metadata`, which the migrations compare against."""

from sqlmodel import SQLModel

from .accounting import NO_DEVICE, DailyAggregate, DeviceSend, ProcessedReport, RateLimitBucket
from .messages import (
    IdempotencyRecord,
    InboundMessage,
    Message,
    MessagePart,
    MessageStatus,
    Otp,
)
from .policy import ClientPolicy, OptOut
from .tenancy import ApiKey, Client, Device
from .webhooks import OutboxEvent, OutboxStatus, WebhookDelivery, WebhookEndpoint

metadata = SQLModel.metadata

__all__ = [
    "NO_DEVICE",
    "ApiKey",
    "Client",
    "ClientPolicy",
    "DailyAggregate",
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
    "WebhookDelivery",
    "WebhookEndpoint",
    "metadata",
]
