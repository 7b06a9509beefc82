"""The webhook body and its signatures (SPEC §7): the FAQ's HMAC and Standard Webhooks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from zimsend.server.accounts.credentials import new_webhook_secret
from zimsend.server.webhook_delivery.signing import (
    USER_AGENT,
    encode_body,
    rfc3339,
    signature_headers,
    standard_webhooks_key,
)

WHEN = dt.datetime(2025, 1, 15, 10, 30, tzinfo=dt.UTC)
DATA = {"message_id": "msg_1234567890abcdef", "status": "delivered", "message": "Café ☕ 👍"}


def test_body_is_the_documented_shape_in_compact_utf8() -> None:
    body = encode_body("sms.delivered", "evt_0123456789abcdef", WHEN, DATA)
    assert json.loads(body) == {
        "event": "sms.delivered",
        "event_id": "evt_0123456789abcdef",
        "timestamp": "2025-01-15T10:30:00Z",
        "data": DATA,
    }
    assert body == json.dumps(json.loads(body), separators=(",", ":"), ensure_ascii=False).encode()
    assert "Café ☕ 👍".encode() in body


def test_rfc3339_keeps_fractions_only_when_present() -> None:
    assert rfc3339(WHEN) == "2025-01-15T10:30:00Z"
    assert rfc3339(WHEN.replace(microsecond=250000)) == "2025-01-15T10:30:00.250Z"


def test_x_webhook_signature_is_hex_hmac_of_the_raw_body_with_the_whole_secret() -> None:
    secret = new_webhook_secret()
    body = encode_body("sms.sent", "evt_1", WHEN, DATA)
    headers = signature_headers(secret, "evt_1", body, WHEN)
    assert (
        headers["X-Webhook-Signature"]
        == hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    )
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"] == USER_AGENT == "ZimSend-Webhook/1.0"
    assert headers["webhook-id"] == "evt_1"


def test_standardwebhooks_verifies_a_generated_secret_as_is() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    now = dt.datetime.now(dt.UTC)
    body = encode_body("sms.sent", "evt_2", now, DATA)
    headers = signature_headers(secret, "evt_2", body, now)
    assert Webhook(secret).verify(body, headers) == json.loads(body)
    assert headers["webhook-timestamp"] == str(int(now.timestamp()))
    assert headers["webhook-signature"].startswith("v1,")


def test_a_tampered_body_or_another_secret_fails_verification() -> None:
    secret = new_webhook_secret()
    now = dt.datetime.now(dt.UTC)
    body = encode_body("sms.sent", "evt_3", now, DATA)
    headers = signature_headers(secret, "evt_3", body, now)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"delivered", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(new_webhook_secret()).verify(body, headers)


def test_a_customer_secret_without_prefix_is_used_as_raw_bytes() -> None:
    secret = "my-own-secret-of-32-characters!!"
    assert standard_webhooks_key(secret) == secret.encode()
    now = dt.datetime.now(dt.UTC)
    body = encode_body("device.connected", "evt_4", now, {"device_id": "device_1"})
    headers = signature_headers(secret, "evt_4", body, now)
    Webhook(secret.encode()).verify(body, headers)  # documented way to verify it


def test_a_customer_whsec_secret_is_decoded_like_the_libraries_do() -> None:
    key = b"0123456789abcdef0123"
    secret = "whsec_" + base64.b64encode(key).decode().rstrip("=")  # unpadded is fine
    assert standard_webhooks_key(secret) == key
    now = dt.datetime.now(dt.UTC)
    body = b'{"x":1}'
    Webhook(secret).verify(body, signature_headers(secret, "evt_5", body, now))
    with pytest.raises(ValueError, match="base64"):
        standard_webhooks_key("whsec_not*base64*at*all!!")


def test_each_attempt_is_signed_with_its_own_timestamp_over_the_same_body() -> None:
    secret = new_webhook_secret()
    body = encode_body("sms.failed", "evt_6", WHEN, DATA)
    first = signature_headers(secret, "evt_6", body, WHEN)
    retry = signature_headers(secret, "evt_6", body, WHEN + dt.timedelta(minutes=6))
    assert first["X-Webhook-Signature"] == retry["X-Webhook-Signature"]
    assert first["webhook-id"] == retry["webhook-id"] == "evt_6"
    assert first["webhook-signature"] != retry["webhook-signature"]
