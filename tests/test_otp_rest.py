"""OTP through the public REST API: the real Envoy transcoding to the real server (SPEC.md §6,
§1 conventions, §10 statuses). Requests are shaped like ZimSend's own Python wrapper's — every
optional field present as JSON `null` — and a sandbox key (created over REST) sends them, so
the built-in simulated device takes the SMS. The code is recovered from its HMAC in the
server's database (`_otp.code_of`).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import httpx
import pytest
from _otp import code_of
from conftest import Stack

from zimsend.server.storage import Database


@pytest.fixture(scope="module")
def sandbox(stack: Stack) -> dict[str, str]:
    """REST headers of a `zs_test_` key of the stack's client."""
    created = httpx.post(
        f"{stack.base_url}/v1/api-keys",
        headers=stack.auth,
        json={"name": "otp sandbox", "test": True},
    )
    assert created.status_code == 200, created.text
    return {"X-API-Key": created.json()["api_key"], "X-Client-ID": stack.client_id}


def post(stack: Stack, headers: dict[str, str], path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{stack.base_url}/v1/sms/{path}", headers=headers, json=body, timeout=10)


def send_otp(stack: Stack, headers: dict[str, str], to: str, **fields: Any) -> httpx.Response:
    """What the wrapper sends: every optional field, null unless given."""
    body = {"to": to, "length": None, "expiry": None, "template": None, "metadata": None}
    return post(stack, headers, "send-otp", {**body, **fields})


def envelope(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["success"] is False, body
    assert body["error"]["code"] == code, body
    assert body["details"][0]["reason"] == code
    return body


def test_wrapper_nulls_send_then_verify(
    stack: Stack, sandbox: dict[str, str], server_db: Database
) -> None:
    sent = send_otp(stack, sandbox, "+33612345601")
    assert sent.status_code == 200, sent.text
    body = sent.json()
    assert set(body) == {"success", "otp_id", "to", "expires_at", "message_id", "status"}
    assert body["success"] is True
    assert body["status"] == "queued"
    assert body["to"] == "+33612345601"
    expires = dt.datetime.fromisoformat(body["expires_at"])
    left = (expires - dt.datetime.now(dt.UTC)).total_seconds()
    assert body["expires_at"].endswith("Z")
    assert 290 < left <= 300
    status = httpx.get(f"{stack.base_url}/v1/sms/status/{body['message_id']}", headers=sandbox)
    assert status.json()["message"] == "Votre code de vérification est : ••••••"
    assert status.json()["priority"] == "urgent"

    otp = send_otp(stack, sandbox, "+33612345601", length=4, metadata={"user": "u-1"}).json()
    code = code_of(server_db, otp["otp_id"])
    wrong = post(
        stack,
        sandbox,
        "verify-otp",
        {"otp_id": otp["otp_id"], "code": "0000" if code != "0000" else "1111"},
    )
    assert wrong.status_code == 200, wrong.text
    assert wrong.json()["success"] is True
    assert wrong.json()["valid"] is False
    assert wrong.json()["attempts_remaining"] == 2
    right = post(stack, sandbox, "verify-otp", {"otp_id": otp["otp_id"], "code": code})
    assert right.status_code == 200, right.text
    assert right.json()["valid"] is True
    assert right.json()["verified_at"].endswith("Z")
    assert right.json()["message"] == "Code verified"
    again = post(stack, sandbox, "verify-otp", {"otp_id": otp["otp_id"], "code": code})
    envelope(again, 404, "OTP_NOT_FOUND")


def test_rest_errors_have_their_documented_statuses(
    stack: Stack, sandbox: dict[str, str], server_db: Database
) -> None:
    bad = envelope(
        send_otp(stack, sandbox, "+33612345602", template="Your code"), 400, "INVALID_REQUEST"
    )
    assert "template" in bad["error"]["message"]
    assert "{{code}}" in bad["error"]["message"]
    bad = envelope(
        send_otp(stack, sandbox, "+33612345602", length=12, expiry=3600), 400, "INVALID_REQUEST"
    )
    assert "4-8" in bad["error"]["message"]
    assert "1-1800" in bad["error"]["message"]

    short = send_otp(stack, sandbox, "+33612345602", length=4, expiry=1).json()
    code = code_of(server_db, short["otp_id"])
    time.sleep(1.2)
    envelope(
        post(stack, sandbox, "verify-otp", {"otp_id": short["otp_id"], "code": code}),
        400,
        "OTP_EXPIRED",
    )

    otp = send_otp(stack, sandbox, "+33612345602", length=4).json()
    code = code_of(server_db, otp["otp_id"])
    wrong = [c for c in ("1111", "2222", "3333", "4444") if c != code][:3]
    remaining = [
        post(stack, sandbox, "verify-otp", {"otp_id": otp["otp_id"], "code": c}).json()[
            "attempts_remaining"
        ]
        for c in wrong
    ]
    assert remaining == [2, 1, 0]
    envelope(
        post(stack, sandbox, "verify-otp", {"otp_id": otp["otp_id"], "code": code}),
        429,
        "OTP_MAX_ATTEMPTS",
    )
    envelope(
        post(stack, sandbox, "verify-otp", {"otp_id": "otp_0000000000000000", "code": "1"}),
        404,
        "OTP_NOT_FOUND",
    )


def test_the_hourly_limit_answers_429_with_retry_after(
    stack: Stack, sandbox: dict[str, str]
) -> None:
    for _ in range(10):
        assert send_otp(stack, sandbox, "+33612345603").status_code == 200
    limited = send_otp(stack, sandbox, "+33612345603")
    body = envelope(limited, 429, "OTP_RATE_LIMIT")
    assert "10 OTPs per hour" in body["error"]["message"]
    assert 3590 <= int(limited.headers["retry-after"]) <= 3600
