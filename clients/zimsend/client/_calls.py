"""Every public RPC once: its REST binding, how its arguments become fields, and how its
reply becomes a typed result. `ZimSend` and `AsyncZimSend` only run these `Call`s, so the
blocking and the asyncio client cannot drift apart in what they send or return.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from zimsend.timestamps import rfc3339

from . import _types as t
from ._transport import Operation

T = TypeVar("T")

PriorityArg = t.Priority | str | int | None
TimeArg = dt.datetime | dt.date | str | None


def _op(service: str, method: str, module: str, http: str, path: str, **flags: bool) -> Operation:
    return Operation(service, method, module, http, path, **flags)


AUTH_TEST = _op("AuthService", "AuthTest", "auth", "GET", "/v1/auth/test", idempotent=True)
SEND = _op("SmsService", "SendSms", "sms", "POST", "/v1/sms/send", keyed=True)
SEND_BULK = _op("SmsService", "SendBulkSms", "sms", "POST", "/v1/sms/send-bulk", keyed=True)
SEND_PERSONALIZED = _op(
    "SmsService",
    "SendBulkPersonalizedSms",
    "sms",
    "POST",
    "/v1/sms/send-bulk-personalized",
    keyed=True,
)
STATUS = _op(
    "SmsService", "GetSmsStatus", "sms", "GET", "/v1/sms/status/{message_id}", idempotent=True
)
HISTORY = _op("SmsService", "ListSmsHistory", "sms", "GET", "/v1/sms/history", idempotent=True)
EXPORT = _op(
    "SmsService",
    "ExportSmsHistory",
    "sms",
    "GET",
    "/v1/sms/history:export",
    idempotent=True,
    streaming=True,
)
STATS = _op("SmsService", "GetSmsStats", "sms", "GET", "/v1/sms/stats", idempotent=True)
CANCEL = _op("SmsService", "CancelSms", "sms", "DELETE", "/v1/sms/{message_id}")
RESEND = _op("SmsService", "ResendSms", "sms", "POST", "/v1/sms/{message_id}/resend")
INBOX = _op("SmsService", "ListInboundSms", "sms", "GET", "/v1/sms/inbox", idempotent=True)
OTP_SEND = _op("OtpService", "SendOtp", "otp", "POST", "/v1/sms/send-otp")
OTP_VERIFY = _op("OtpService", "VerifyOtp", "otp", "POST", "/v1/sms/verify-otp")
DEVICE_CREATE = _op("DeviceService", "CreateDevice", "devices", "POST", "/v1/devices")
DEVICE_LIST = _op("DeviceService", "ListDevices", "devices", "GET", "/v1/devices", idempotent=True)
DEVICE_GET = _op(
    "DeviceService", "GetDevice", "devices", "GET", "/v1/devices/{device_id}", idempotent=True
)
DEVICE_UPDATE = _op(
    "DeviceService", "UpdateDevice", "devices", "PATCH", "/v1/devices/{device_id}", idempotent=True
)
DEVICE_DELETE = _op("DeviceService", "DeleteDevice", "devices", "DELETE", "/v1/devices/{device_id}")
DEVICE_ROTATE = _op(
    "DeviceService",
    "RotateDevicePassword",
    "devices",
    "POST",
    "/v1/devices/{device_id}/rotate-password",
)
KEY_CREATE = _op("ApiKeyService", "CreateApiKey", "api_keys", "POST", "/v1/api-keys")
KEY_LIST = _op("ApiKeyService", "ListApiKeys", "api_keys", "GET", "/v1/api-keys", idempotent=True)
KEY_REVOKE = _op("ApiKeyService", "RevokeApiKey", "api_keys", "DELETE", "/v1/api-keys/{key_id}")
WEBHOOK_CONFIGURE = _op(
    "WebhookService", "ConfigureWebhook", "webhooks", "POST", "/v1/webhooks/configure"
)
WEBHOOK_LIST = _op(
    "WebhookService", "ListWebhooks", "webhooks", "GET", "/v1/webhooks", idempotent=True
)
WEBHOOK_LOGS = _op(
    "WebhookService", "ListWebhookLogs", "webhooks", "GET", "/v1/webhooks/logs", idempotent=True
)
WEBHOOK_TEST = _op(
    "WebhookService", "TestWebhook", "webhooks", "POST", "/v1/webhooks/{webhook_id}/test"
)
WEBHOOK_DELETE = _op(
    "WebhookService", "DeleteWebhook", "webhooks", "DELETE", "/v1/webhooks/{webhook_id}"
)
WEBHOOK_REDELIVER = _op(
    "WebhookService",
    "RedeliverWebhookEvent",
    "webhooks",
    "POST",
    "/v1/webhooks/events/{event_id}/redeliver",
)
OPT_OUT_LIST = _op(
    "OptOutService", "ListOptOuts", "opt_outs", "GET", "/v1/opt-outs", idempotent=True
)
OPT_OUT_ADD = _op("OptOutService", "AddOptOut", "opt_outs", "POST", "/v1/opt-outs", idempotent=True)
OPT_OUT_REMOVE = _op(
    "OptOutService", "RemoveOptOut", "opt_outs", "DELETE", "/v1/opt-outs/{phone_number}"
)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to make and how to read its reply. `idempotency_key`: the caller's own,
    else the client makes one (keyed operations) and keeps it across retries."""

    operation: Operation
    fields: Mapping[str, Any]
    parse: Callable[[dict[str, Any]], T]
    idempotency_key: str | None = None
    device_id: str | None = None


def _one(cls: type[T]) -> Callable[[dict[str, Any]], T]:
    return lambda data: t.from_json(cls, data)


def _none(data: dict[str, Any]) -> None:
    return None


def priority(value: PriorityArg) -> int | str | None:
    """1-5 or a name (`"high"`, `Priority.HIGH`); the API takes both."""
    if value is None or isinstance(value, int):
        return value
    return str(value).lower()


def time_arg(value: TimeArg) -> str | None:
    """A datetime (naive means UTC) → RFC 3339; a date → `YYYY-MM-DD`; strings as given."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dt.datetime):
        return rfc3339(value)
    return value.isoformat()


def _page(cls: type[T], key: str) -> Callable[[dict[str, Any]], t.Page[T]]:
    def parse(data: dict[str, Any]) -> t.Page[T]:
        items = tuple(t.from_json(cls, item) for item in data.get(key) or ())
        return t.Page(items, t.from_json(t.Pagination, data.get("pagination") or {}))

    return parse


def _items(cls: type[T], key: str) -> Callable[[dict[str, Any]], list[T]]:
    return lambda data: [t.from_json(cls, item) for item in data.get(key) or ()]


def _stats(data: dict[str, Any]) -> t.Stats:
    period = data.get("period") or {}
    stats = dict(data.get("stats") or {})
    stats["period_from"], stats["period_to"] = period.get("from"), period.get("to")
    return t.from_json(t.Stats, stats)


def _device(data: dict[str, Any]) -> t.Device:
    return t.from_json(t.Device, data.get("device") or data)


# --- SMS ------------------------------------------------------------------------------------


def send(
    to: str,
    message: str,
    *,
    priority_: PriorityArg,
    webhook_url: str | None,
    metadata: Mapping[str, Any] | None,
    scheduled_at: TimeArg,
    sim_slot: int | None,
    idempotency_key: str | None,
    device_id: str | None,
) -> Call[t.SentMessage]:
    fields = {
        "to": to,
        "message": message,
        "priority": priority(priority_),
        "webhook_url": webhook_url,
        "metadata": metadata,
        "scheduled_at": time_arg(scheduled_at),
        "sim_slot": sim_slot,
    }
    return Call(SEND, fields, _one(t.SentMessage), idempotency_key, device_id)


def send_bulk(
    recipients: Sequence[str],
    message: str,
    *,
    priority_: PriorityArg,
    webhook_url: str | None,
    metadata: Mapping[str, Any] | None,
    scheduled_at: TimeArg,
    idempotency_key: str | None,
    device_id: str | None,
) -> Call[t.Batch]:
    fields = {
        "recipients": list(recipients),
        "message": message,
        "priority": priority(priority_),
        "webhook_url": webhook_url,
        "metadata": metadata,
        "scheduled_at": time_arg(scheduled_at),
    }
    return Call(SEND_BULK, fields, _one(t.Batch), idempotency_key, device_id)


def send_personalized(
    messages: Sequence[Mapping[str, Any]],
    *,
    priority_: PriorityArg,
    webhook_url: str | None,
    scheduled_at: TimeArg,
    idempotency_key: str | None,
    device_id: str | None,
) -> Call[t.Batch]:
    items = [
        {k: v for k, v in m.items() if k in ("to", "message", "metadata") and v is not None}
        for m in messages
    ]
    fields = {
        "messages": items,
        "priority": priority(priority_),
        "webhook_url": webhook_url,
        "scheduled_at": time_arg(scheduled_at),
    }
    return Call(SEND_PERSONALIZED, fields, _one(t.Batch), idempotency_key, device_id)


def status(message_id: str) -> Call[t.Message]:
    return Call(STATUS, {"message_id": message_id}, _one(t.Message))


def history(
    *,
    page: int | None,
    limit: int | None,
    status_: str | None,
    to: str | None,
    from_date: TimeArg,
    to_date: TimeArg,
    device_id: str | None,
    search: str | None,
    delivery_report_missing: bool | None = None,
) -> Call[t.Page[t.Message]]:
    fields = {
        "page": page,
        "limit": limit,
        "status": status_ and str(status_),
        "to": to,
        "from_date": time_arg(from_date),
        "to_date": time_arg(to_date),
        "device_id": device_id,
        "search": search,
        "delivery_report_missing": delivery_report_missing,
    }
    return Call(HISTORY, fields, _page(t.Message, "data"))


def export(
    *, format: str, from_date: TimeArg, to_date: TimeArg, status_: str | None, device_id: str | None
) -> Call[None]:
    fields = {
        "format": format,
        "from_date": time_arg(from_date),
        "to_date": time_arg(to_date),
        "status": status_ and str(status_),
        "device_id": device_id,
    }
    return Call(EXPORT, fields, _none)


def stats(*, from_date: TimeArg, to_date: TimeArg, device_id: str | None) -> Call[t.Stats]:
    fields = {
        "from_date": time_arg(from_date),
        "to_date": time_arg(to_date),
        "device_id": device_id,
    }
    return Call(STATS, fields, _stats)


def cancel(message_id: str) -> Call[t.CancelledMessage]:
    return Call(CANCEL, {"message_id": message_id}, _one(t.CancelledMessage))


def resend(message_id: str) -> Call[t.ResentMessage]:
    return Call(RESEND, {"message_id": message_id}, _one(t.ResentMessage))


def inbox(
    *,
    page: int | None,
    limit: int | None,
    from_date: TimeArg,
    to_date: TimeArg,
    device_id: str | None,
) -> Call[t.Page[t.InboundSms]]:
    fields = {
        "page": page,
        "limit": limit,
        "from_date": time_arg(from_date),
        "to_date": time_arg(to_date),
        "device_id": device_id,
    }
    return Call(INBOX, fields, _page(t.InboundSms, "data"))


# --- OTP ------------------------------------------------------------------------------------


def otp_send(
    to: str,
    *,
    length: int | None,
    expiry: int | None,
    template: str | None,
    metadata: Mapping[str, Any] | None,
) -> Call[t.OtpSent]:
    fields = {
        "to": to,
        "length": length,
        "expiry": expiry,
        "template": template,
        "metadata": metadata,
    }
    return Call(OTP_SEND, fields, _one(t.OtpSent))


def otp_verify(otp_id: str, code: str) -> Call[t.OtpVerification]:
    return Call(OTP_VERIFY, {"otp_id": otp_id, "code": code}, _one(t.OtpVerification))


# --- Auth, devices, keys, webhooks ----------------------------------------------------------


def auth_test(device_id: str | None = None) -> Call[t.AuthInfo]:
    return Call(AUTH_TEST, {}, _one(t.AuthInfo), device_id=device_id)


def device_create(name: str) -> Call[t.DeviceCreated]:
    return Call(DEVICE_CREATE, {"name": name}, _one(t.DeviceCreated))


def device_list() -> Call[list[t.Device]]:
    return Call(DEVICE_LIST, {}, _items(t.Device, "devices"))


def device_get(device_id: str) -> Call[t.Device]:
    return Call(DEVICE_GET, {"device_id": device_id}, _device)


def device_update(
    device_id: str,
    *,
    name: str | None,
    enabled: bool | None,
    send_interval_ms: int | None,
    daily_cap: int | None,
    parts_per_minute: int | None = None,
    parts_per_hour: int | None = None,
    parts_per_day: int | None = None,
) -> Call[t.Device]:
    fields = {
        "device_id": device_id,
        "name": name,
        "enabled": enabled,
        "send_interval_ms": send_interval_ms,
        "daily_cap": daily_cap,
        "parts_per_minute": parts_per_minute,
        "parts_per_hour": parts_per_hour,
        "parts_per_day": parts_per_day,
    }
    return Call(DEVICE_UPDATE, fields, _device)


def device_delete(device_id: str) -> Call[None]:
    return Call(DEVICE_DELETE, {"device_id": device_id}, _none)


def device_rotate(device_id: str) -> Call[t.DevicePassword]:
    return Call(DEVICE_ROTATE, {"device_id": device_id}, _one(t.DevicePassword))


def key_create(name: str, test: bool) -> Call[t.ApiKeyCreated]:
    return Call(KEY_CREATE, {"name": name, "test": test}, _one(t.ApiKeyCreated))


def key_list() -> Call[list[t.ApiKey]]:
    return Call(KEY_LIST, {}, _items(t.ApiKey, "api_keys"))


def key_revoke(key_id: str) -> Call[None]:
    return Call(KEY_REVOKE, {"key_id": key_id}, _none)


def webhook_configure(
    url: str, events: Sequence[str], secret: str | None
) -> Call[t.WebhookCreated]:
    fields = {"url": url, "events": list(events), "secret": secret}
    return Call(WEBHOOK_CONFIGURE, fields, _one(t.WebhookCreated))


def webhook_list() -> Call[list[t.Webhook]]:
    return Call(WEBHOOK_LIST, {}, _items(t.Webhook, "webhooks"))


def webhook_logs(
    *,
    page: int | None,
    limit: int | None,
    webhook_id: str | None,
    event_id: str | None,
    message_id: str | None,
) -> Call[t.Page[t.WebhookLog]]:
    fields = {
        "page": page,
        "limit": limit,
        "webhook_id": webhook_id,
        "event_id": event_id,
        "message_id": message_id,
    }
    return Call(WEBHOOK_LOGS, fields, _page(t.WebhookLog, "logs"))


def webhook_test(webhook_id: str) -> Call[t.WebhookTest]:
    return Call(WEBHOOK_TEST, {"webhook_id": webhook_id}, _one(t.WebhookTest))


def webhook_delete(webhook_id: str) -> Call[None]:
    return Call(WEBHOOK_DELETE, {"webhook_id": webhook_id}, _none)


def webhook_redeliver(event_id: str) -> Call[None]:
    return Call(WEBHOOK_REDELIVER, {"event_id": event_id}, _none)


def opt_out_list(
    *, page: int | None, limit: int | None, phone_number: str | None
) -> Call[t.Page[t.OptOut]]:
    fields = {"page": page, "limit": limit, "phone_number": phone_number}
    return Call(OPT_OUT_LIST, fields, _page(t.OptOut, "opt_outs"))


def opt_out_add(phone_number: str) -> Call[t.OptOutAdded]:
    return Call(OPT_OUT_ADD, {"phone_number": phone_number}, _one(t.OptOutAdded))


def opt_out_remove(phone_number: str) -> Call[None]:
    return Call(OPT_OUT_REMOVE, {"phone_number": phone_number}, _none)
