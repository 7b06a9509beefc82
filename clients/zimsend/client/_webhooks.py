"""Checking a webhook delivery and reading its event.

Every delivery carries two signatures (docs/webhooks.md, the worker's
`webhook_delivery/signing.py`): `X-Webhook-Signature`, the hex HMAC-SHA256 of the raw body
keyed with the secret string (the FAQ's check), and Standard Webhooks' `webhook-id`,
`webhook-timestamp`, `webhook-signature` (`v1,<base64>` of the HMAC of `id.timestamp.body`).
Both are checked, in constant time: the first binds the body, the second also binds the time,
so a recorded delivery replayed later is refused (a forger who strips the Standard Webhooks
headers to escape the time check fails too). The body's `event_id` must equal `webhook-id`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import _types as t
from ._errors import ZimSendError

__all__ = [
    "DeviceEventData",
    "OtpVerifiedData",
    "SmsEventData",
    "WebhookEvent",
    "WebhookTestData",
    "WebhookVerificationError",
    "verify_webhook",
]

SECRET_PREFIX = "whsec_"


class WebhookVerificationError(ZimSendError):
    """The delivery is not from ZimSend, was altered, or is too old: answer 401 (or 400)."""

    def __init__(self, message: str) -> None:
        super().__init__("WEBHOOK_SIGNATURE_INVALID", message, http_status=401)


@dataclass(frozen=True)
class SmsEventData:
    """`data` of `sms.sent`, `sms.delivered`, `sms.failed`."""

    message_id: str
    status: t.MessageStatus | None = None
    to: str = ""
    message: str = ""
    device_id: str = ""
    sent_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    error: t.MessageError | None = None
    metadata: Mapping[str, Any] | None = None
    batch_id: str = ""


@dataclass(frozen=True)
class DeviceEventData:
    """`data` of `device.connected` and `device.disconnected` (`reason`, `last_seen`)."""

    device_id: str
    device_name: str = ""
    phone_number: str = ""
    android_version: str = ""
    app_version: str = ""
    connected_at: dt.datetime | None = None
    disconnected_at: dt.datetime | None = None
    reason: str = ""
    last_seen: dt.datetime | None = None
    ip_address: str = ""


@dataclass(frozen=True)
class OtpVerifiedData:
    """`data` of `otp.verified` (never the code)."""

    otp_id: str
    to: str = ""
    verified_at: dt.datetime | None = None
    message_id: str = ""
    metadata: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class OptOutEventData:
    """`data` of `sms.opted_out` and `sms.opted_in` (docs/compliance.md): `source` is `keyword`
    (the number texted STOP / START to `device_id`; `keyword` is that text) or `api`."""

    phone_number: str
    source: str = ""
    keyword: str = ""
    device_id: str = ""
    inbound_id: str = ""
    opted_out_at: dt.datetime | None = None
    opted_in_at: dt.datetime | None = None


@dataclass(frozen=True)
class WebhookTestData:
    """`data` of `webhook.test` (`POST /v1/webhooks/{id}/test`)."""

    webhook_id: str
    message: str = ""


EventData = (
    SmsEventData
    | DeviceEventData
    | t.InboundSms
    | OtpVerifiedData
    | OptOutEventData
    | WebhookTestData
)

_DATA: dict[str, type[Any]] = {
    "sms.sent": SmsEventData,
    "sms.delivered": SmsEventData,
    "sms.failed": SmsEventData,
    "device.connected": DeviceEventData,
    "device.disconnected": DeviceEventData,
    "sms.received": t.InboundSms,
    "otp.verified": OtpVerifiedData,
    "sms.opted_out": OptOutEventData,
    "sms.opted_in": OptOutEventData,
    "webhook.test": WebhookTestData,
}


@dataclass(frozen=True)
class WebhookEvent:
    """A verified event. `data` is typed by `event` (`SmsEventData` for `sms.*`,
    `InboundSms` for `sms.received`, ...); `raw_data` is the JSON object as sent. Deliveries
    are at least once: deduplicate on `event_id`."""

    event: str
    event_id: str
    timestamp: dt.datetime | None
    data: EventData | Mapping[str, Any]
    raw_data: Mapping[str, Any]


def verify_webhook(
    body: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance: float = 300.0,
    now: float | None = None,
) -> WebhookEvent:
    """Check both signatures of one delivery and return its event.

    `body`: the raw request body, exactly as received (not re-serialized JSON). `headers`:
    the request's headers (any case). `secret`: the endpoint's secret as shown when it was
    configured. `tolerance`: how far `webhook-timestamp` may be from now, in seconds.
    Raises WebhookVerificationError.
    """
    raw = body.encode("utf-8") if isinstance(body, str) else bytes(body)
    lower = {k.lower(): v for k, v in headers.items()}
    _check_hex(raw, lower.get("x-webhook-signature"), secret)
    event_id = _check_standard(raw, lower, secret, tolerance, time.time() if now is None else now)
    try:
        parsed = json.loads(raw)
    except ValueError:
        raise WebhookVerificationError("the body is not JSON") from None
    if not isinstance(parsed, dict) or parsed.get("event_id") != event_id:
        raise WebhookVerificationError("the body's event_id is not the webhook-id header")
    return _event(parsed)


def _check_hex(body: bytes, given: str | None, secret: str) -> None:
    if not given:
        raise WebhookVerificationError("no X-Webhook-Signature header")
    expected = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode(), given.strip().lower().encode()):
        raise WebhookVerificationError("X-Webhook-Signature does not match the body")


def _check_standard(
    body: bytes, headers: Mapping[str, str], secret: str, tolerance: float, now: float
) -> str:
    event_id, stamp, signatures = (
        headers.get(name) for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
    )
    if not (event_id and stamp and signatures):
        raise WebhookVerificationError(
            "missing webhook-id, webhook-timestamp or webhook-signature header"
        )
    try:
        sent_at = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not a number") from None
    if abs(now - sent_at) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {int(now - sent_at)} s from now (at most {tolerance:g} s):"
            " too old or replayed"
        )
    signed = f"{event_id}.{stamp}.".encode() + body
    expected = base64.b64encode(hmac.new(_standard_key(secret), signed, hashlib.sha256).digest())
    for candidate in signatures.split():
        version, _, value = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, value.encode()):
            return event_id
    raise WebhookVerificationError("webhook-signature does not match")


def _standard_key(secret: str) -> bytes:
    """Standard Webhooks' key: base64 after `whsec_`, else the secret's UTF-8 bytes."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise WebhookVerificationError(
            "the part of the secret after whsec_ is not base64"
        ) from None


def _event(parsed: Mapping[str, Any]) -> WebhookEvent:
    kind = str(parsed.get("event", ""))
    found = parsed.get("data")
    raw_data: dict[str, Any] = found if isinstance(found, dict) else {}
    data_cls = _DATA.get(kind)
    data: Any = t.from_json(data_cls, raw_data) if data_cls else dict(raw_data)
    return WebhookEvent(
        kind,
        str(parsed.get("event_id", "")),
        t.parse_time(parsed.get("timestamp")),
        data,
        dict(raw_data),
    )
