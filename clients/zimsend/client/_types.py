"""What the API answers, as frozen dataclasses (never dicts).

Field names are the proto field names (protos/zimsend/v1/*.proto, the REST JSON keys), so a
field documented in SPEC or /v1/openapi.json has the same name here. Both transports produce
the same JSON shape (the gRPC one prints its protobuf replies with proto field names), and
`from_json` turns it into these types: times become aware `datetime`s, enum names become
`StrEnum`s (which compare equal to SPEC's strings: `message.status == "delivered"`), fields
the server added after this SDK are ignored, and absent ones take their defaults.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

__all__ = [
    "ApiKey",
    "ApiKeyCreated",
    "AuthInfo",
    "Batch",
    "BatchMessage",
    "CancelledMessage",
    "DailyStats",
    "Device",
    "DeviceCapabilities",
    "DeviceCreated",
    "DevicePassword",
    "DeviceStatus",
    "InboundSms",
    "Message",
    "MessageError",
    "MessageStatus",
    "OptOut",
    "OptOutAdded",
    "OtpSent",
    "OtpVerification",
    "Page",
    "Pagination",
    "Priority",
    "ResentMessage",
    "SentMessage",
    "SimSlot",
    "Stats",
    "Webhook",
    "WebhookCreated",
    "WebhookLog",
    "WebhookTest",
    "from_json",
]

T = TypeVar("T")


class Priority(enum.StrEnum):
    """SPEC §3: 1 = urgent … 5 = very_low; the API also takes the integers."""

    URGENT = "urgent"
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"
    VERY_LOW = "very_low"


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    SENT = "sent"
    DELIVERED = "delivered"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        """No later status can follow (`sent` is not final: a delivery report may come)."""
        return self in (MessageStatus.DELIVERED, MessageStatus.FAILED, MessageStatus.CANCELLED)


class DeviceStatus(enum.StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


# --- Messages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageError:
    """Why a message failed (or why its last attempt did): `code` is one of SPEC §7's
    `sms.failed` codes, `reason` the precise FailureCode (e.g. NO_SERVICE behind
    NETWORK_ERROR), `retryable` whether sending it again may succeed, `hint` what to do."""

    code: str = ""
    message: str = ""
    reason: str = ""
    retryable: bool = False
    hint: str = ""


@dataclass(frozen=True)
class SentMessage:
    """A queued SMS (the answer to a send)."""

    message_id: str
    status: MessageStatus | None = None
    to: str = ""
    queued_at: dt.datetime | None = None
    estimated_delivery: dt.datetime | None = None
    segments: int = 0
    encoding: str = ""
    priority: Priority | None = None
    scheduled_at: dt.datetime | None = None


@dataclass(frozen=True)
class BatchMessage:
    message_id: str
    to: str = ""
    status: MessageStatus | None = None


@dataclass(frozen=True)
class Batch:
    """A bulk send: one entry per recipient, in request order."""

    batch_id: str
    total_recipients: int = 0
    messages: tuple[BatchMessage, ...] = ()
    queued_at: dt.datetime | None = None


@dataclass(frozen=True)
class Message:
    """One message as status and history show it."""

    message_id: str
    status: MessageStatus | None = None
    to: str = ""
    message: str = ""
    priority: Priority | None = None
    device_id: str = ""
    segments: int = 0
    encoding: str = ""
    created_at: dt.datetime | None = None
    queued_at: dt.datetime | None = None
    sent_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    error: MessageError | None = None
    metadata: Mapping[str, Any] | None = None
    scheduled_at: dt.datetime | None = None
    cancelled_at: dt.datetime | None = None
    attempts: int = 0
    batch_id: str = ""
    #: While it waits for the end of the recipient's quiet hours: when it will go.
    held_until: dt.datetime | None = None
    #: Why it waits (`quiet_hours`); "" when it does not.
    hold_reason: str = ""
    #: `sent`, and no delivery report came within the server's timeout (24 h by default).
    delivery_report_missing: bool = False


@dataclass(frozen=True)
class CancelledMessage:
    message_id: str
    status: MessageStatus | None = None
    message: str = ""


@dataclass(frozen=True)
class ResentMessage:
    message_id: str
    status: MessageStatus | None = None
    attempts: int = 0
    queued_at: dt.datetime | None = None


@dataclass(frozen=True)
class Pagination:
    current_page: int = 1
    per_page: int = 0
    total_pages: int = 0
    total_items: int = 0


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of a list call; `has_more` says whether a next page exists."""

    items: tuple[T, ...]
    pagination: Pagination

    @property
    def has_more(self) -> bool:
        return self.pagination.current_page < self.pagination.total_pages


@dataclass(frozen=True)
class DailyStats:
    date: str
    sent: int = 0
    delivered: int = 0
    failed: int = 0


@dataclass(frozen=True)
class Stats:
    """SPEC §4 stats; `period_from`/`period_to` are the answer's `period.from`/`period.to`."""

    period_from: dt.datetime | None = None
    period_to: dt.datetime | None = None
    total_sent: int = 0
    delivered: int = 0
    failed: int = 0
    pending: int = 0
    delivery_rate: float = 0.0
    by_day: tuple[DailyStats, ...] = ()


@dataclass(frozen=True)
class InboundSms:
    """An SMS a phone received. `from_` is the JSON `from` (a Python keyword)."""

    id: str
    device_id: str = ""
    from_: str = field(default="", metadata={"json": "from"})
    message: str = ""
    sim_slot: int = 0
    received_at: dt.datetime | None = None


# --- OTP ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OtpSent:
    otp_id: str
    to: str = ""
    expires_at: dt.datetime | None = None
    message_id: str = ""
    status: MessageStatus | None = None


@dataclass(frozen=True)
class OtpVerification:
    """`valid` is False for a wrong code (HTTP 200), with `attempts_remaining`."""

    valid: bool
    message: str = ""
    verified_at: dt.datetime | None = None
    attempts_remaining: int | None = None


# --- Auth, devices, keys --------------------------------------------------------------------


@dataclass(frozen=True)
class AuthInfo:
    client_id: str
    message: str = ""
    device_id: str = ""
    device_status: DeviceStatus | None = None


@dataclass(frozen=True)
class SimSlot:
    slot: int = 0
    carrier: str = ""
    phone_number: str = ""


@dataclass(frozen=True)
class DeviceCapabilities:
    backend: str = ""
    delivery_reports: bool = False
    inbound_sms: bool = False


@dataclass(frozen=True)
class Device:
    device_id: str
    name: str = ""
    status: DeviceStatus | None = None
    enabled: bool = False
    last_seen: dt.datetime | None = None
    battery: int | None = None
    charging: bool = False
    signal: int | None = None
    app_version: str = ""
    android_version: str = ""
    phone_number: str = ""
    sims: tuple[SimSlot, ...] = ()
    send_interval_ms: int = 0
    daily_cap: int = 0
    model: str = ""
    created_at: dt.datetime | None = None
    network: str | None = None
    cannot_send_reason: str = ""
    capabilities: DeviceCapabilities | None = None
    #: Send budget of each SIM, in SMS parts per 60 s / hour / 24 h (0: no limit).
    parts_per_minute: int = 0
    parts_per_hour: int = 0
    parts_per_day: int = 0
    #: Given nothing until then (a send-limit failure, or a failure before sending).
    cooling_down_until: dt.datetime | None = None


@dataclass(frozen=True)
class DeviceCreated:
    """A new device: `device_password` and `pairing_uri` are shown this once."""

    device_id: str
    name: str = ""
    device_password: str = ""
    pairing_uri: str = ""
    client_id: str = ""


@dataclass(frozen=True)
class DevicePassword:
    """A rotated device password (the old one stopped working at once)."""

    device_id: str
    device_password: str = ""
    pairing_uri: str = ""


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str = ""
    last4: str = ""
    test: bool = False
    created_at: dt.datetime | None = None
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None = None


@dataclass(frozen=True)
class ApiKeyCreated:
    """A new key: `api_key` is shown this once."""

    key_id: str
    name: str = ""
    api_key: str = ""
    test: bool = False
    created_at: dt.datetime | None = None


# --- Opt-outs -------------------------------------------------------------------------------


@dataclass(frozen=True)
class OptOut:
    """A number that must not be sent to (`source`: `keyword` when it texted STOP, `api`)."""

    phone_number: str
    source: str = ""
    keyword: str = ""
    device_id: str = ""
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class OptOutAdded:
    """`created` is False when the number was already listed (`opt_out` is that entry)."""

    opt_out: OptOut
    created: bool = False


# --- Webhooks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Webhook:
    webhook_id: str
    url: str = ""
    events: tuple[str, ...] = ()
    status: str = ""
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class WebhookCreated:
    """A configured endpoint: `secret` is shown this once (keep it for `verify_webhook`)."""

    webhook_id: str
    url: str = ""
    events: tuple[str, ...] = ()
    secret: str = ""
    status: str = ""


@dataclass(frozen=True)
class WebhookLog:
    """One delivery attempt; `response_status` is 0 when no answer came; `message_id` is the
    message the event is about ("" for device, inbound, opt-out and test events)."""

    event_id: str
    event: str = ""
    webhook_id: str = ""
    url: str = ""
    response_status: int = 0
    response_time_ms: int = 0
    success: bool = False
    attempt: int = 0
    timestamp: dt.datetime | None = None
    error: str = ""
    message_id: str = ""


@dataclass(frozen=True)
class WebhookTest:
    event_id: str
    message: str = ""


# --- JSON → dataclass -----------------------------------------------------------------------


def parse_time(value: Any) -> dt.datetime | None:
    """RFC 3339 (`Z`, fractions up to nanoseconds) → aware UTC datetime; '' → None."""
    if not value:
        return None
    text = str(value).replace("Z", "+00:00").replace("z", "+00:00")
    if "." in text:  # fromisoformat takes at most 6 fractional digits on 3.11
        head, rest = text.split(".", 1)
        digits = len(rest) - len(rest.lstrip("0123456789"))
        text = f"{head}.{rest[: min(digits, 6)]:0<6}{rest[digits:]}"
    stamp = dt.datetime.fromisoformat(text)
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)


def from_json(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass `cls` from its JSON object (unknown keys ignored)."""
    hints = _hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]  # T: a dataclass, unsaid
        key = f.metadata.get("json", f.name)
        if key in data and data[key] is not None:
            values[f.name] = _convert(hints[f.name], data[key])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            values[f.name] = _convert(hints[f.name], _EMPTY.get(hints[f.name], ""))
    return cls(**values)


_EMPTY: dict[Any, Any] = {bool: False, int: 0}
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        (item, _) = typing.get_args(hint)
        return tuple(_convert(item, v) for v in value)
    if origin is not None and issubclass(origin, Mapping):
        return dict(value)
    if hint is dt.datetime:
        return parse_time(value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:  # `*_UNSPECIFIED` or a value newer than this SDK
            return None
    if dataclasses.is_dataclass(hint):
        return from_json(hint, value)  # type: ignore[arg-type]  # is_dataclass said so
    if hint is int:
        return int(value)
    if hint is float:
        return float(value)
    return value
