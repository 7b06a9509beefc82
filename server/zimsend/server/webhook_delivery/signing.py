"""The webhook body and its two signatures.

The body is serialized once per event and every attempt sends exactly those bytes, so a
receiver that deduplicates by `event_id` or by body hash sees the same thing on every retry,
and the signatures are computed over the bytes actually sent (never over a re-serialization).

Two signatures, two audiences (SPEC §7):

- `X-Webhook-Signature`: hex HMAC-SHA256 of the raw body, keyed with the secret string exactly as
  shown at configuration (`whsec_…` included) — what the FAQ's Node.js snippet computes with
  `crypto.createHmac('sha256', WEBHOOK_SECRET).update(body).digest('hex')`.
- Standard Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`): HMAC
  of `"{id}.{timestamp}.{body}"`, so receivers can reject replays. The Standard Webhooks
  libraries derive their key from a `whsec_…` secret by base64-decoding the part after the
  prefix; generated secrets (`new_webhook_secret`) are exactly that format, so
  `Webhook("whsec_…")` verifies out of the box. A customer-chosen secret without the prefix is
  used as its raw UTF-8 bytes (verify with `Webhook(secret.encode())` in Python, or
  `new Webhook(secret, {format: "raw"})` in JavaScript); one with the prefix must be valid
  base64 after it (`standard_webhooks_key`), checked when it is configured.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import functools
import hashlib
import hmac
import json
from typing import Any, Final

from zimsend.timestamps import rfc3339

__all__ = [
    "SECRET_PREFIX",
    "USER_AGENT",
    "encode_body",
    "rfc3339",
    "signature_headers",
    "standard_webhooks_key",
    "x_webhook_signature",
]

SECRET_PREFIX: Final = "whsec_"
USER_AGENT: Final = "ZimSend-Webhook/1.0"


def encode_body(event_type: str, event_id: str, created_at: dt.datetime, data: Any) -> bytes:
    """`{event, event_id, timestamp, data}` as compact UTF-8 JSON (`JSON.stringify`'s shape)."""
    body = {
        "event": event_type,
        "event_id": event_id,
        "timestamp": rfc3339(created_at),
        "data": data,
    }
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def x_webhook_signature(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of the raw body keyed with the secret string (the FAQ's snippet)."""
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


@functools.lru_cache(maxsize=1024)
def standard_webhooks_key(secret: str) -> bytes:
    """The HMAC key Standard Webhooks libraries use for `secret` (see module docstring).

    Raises ValueError for a `whsec_` secret whose remainder is not base64: the libraries would
    silently derive some other key from it, and nobody could verify. Cached: every POST to a
    receiver derives the same key from the same secret.
    """
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("the part after whsec_ must be base64") from None
    if not key:
        raise ValueError("the part after whsec_ must not be empty")
    return key


def signature_headers(secret: str, event_id: str, body: bytes, now: dt.datetime) -> dict[str, str]:
    """Every header of one attempt. `now` is the attempt's time (`webhook-timestamp`), so a
    retry is signed afresh and still passes a receiver's replay window."""
    timestamp = str(int(now.timestamp()))
    signed = f"{event_id}.{timestamp}.".encode() + body
    standard = hmac.new(standard_webhooks_key(secret), signed, hashlib.sha256).digest()
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "X-Webhook-Signature": x_webhook_signature(secret, body),
        "webhook-id": event_id,
        "webhook-timestamp": timestamp,
        "webhook-signature": "v1," + base64.b64encode(standard).decode("ascii"),
    }
