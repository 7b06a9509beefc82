"""Sending SMS through the public REST API, end to end: the real Envoy in front of the real
server, and a real simulated phone connected through Envoy's phone listener (issue 5's
acceptance, the FAQ's examples, and ZimSend's own Python wrapper with only its base URL changed).
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest
from _devices import outbox_lines, start_agent, wait_for
from _zimsend_wrapper import ZimSendClient, ZimSendError
from conftest import Stack


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    data_dir = tmp_path_factory.mktemp("zimsend-data")
    # Fast presence so the test sees the phone within a second; default pacing (2.5 s) is
    # changed per device where a test needs speed.
    return make_env(
        data_dir,
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
    )


class Phone(NamedTuple):
    """The module's device and the outbox file its simulated phone writes what it sends to."""

    device_id: str
    outbox: Path


@pytest.fixture(scope="module")
def phone(
    stack: Stack, zimsend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Phone]:
    """A device created over REST and a real agent connected through Envoy's phone port."""
    created = httpx.post(
        f"{stack.base_url}/v1/devices", headers=stack.auth, json={"name": "rest phone"}
    ).json()
    assert created["success"] is True
    assert created["device_password"]
    device_id = created["device_id"]
    patched = httpx.patch(
        f"{stack.base_url}/v1/devices/{device_id}", headers=stack.auth, json={"send_interval_ms": 0}
    )
    assert patched.status_code == 200, patched.text
    workdir = tmp_path_factory.mktemp("phone")
    agent = start_agent(
        zimsend_env,
        stack.envoy.device_target,
        stack.client_id,
        device_id,
        created["device_password"],
        workdir,
        "--delivery-delay",
        "0.2",
        "--send-delay",
        "0.05",
    )
    with agent:
        wait_for(lambda: _device(stack, device_id)["status"] == "online", 20, "phone online")
        yield Phone(device_id, workdir / "outbox.jsonl")


def _device(stack: Stack, device_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{stack.base_url}/v1/devices/{device_id}", headers=stack.auth
    ).json()
    return body


def _status(stack: Stack, message_id: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{stack.base_url}/v1/sms/status/{message_id}", headers=stack.auth
    ).json()
    return body


def test_faq_send_reaches_the_phone_and_is_delivered(stack: Stack, phone: Phone) -> None:
    device_id, outbox = phone
    reply = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers=stack.auth,
        json={
            "to": "+33612345678",
            "message": "Bonjour depuis ZimSend",
            "priority": "high",
            "metadata": {"order": 42},
        },
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["success"] is True
    assert body["status"] == "queued"
    assert body["message_id"].startswith("msg_")
    assert len(body["message_id"]) == 20
    assert body["to"] == "+33612345678"
    final = wait_for(
        lambda: (s := _status(stack, body["message_id"]))["status"] == "delivered" and s,
        20,
        "delivered",
    )
    assert final["device_id"] == device_id
    assert final["priority"] == "high"
    assert final["metadata"] == {"order": 42}
    assert final["sent_at"]
    assert final["delivered_at"]
    sent = [line for line in outbox_lines(outbox) if line["message_id"] == body["message_id"]]
    assert len(sent) == 1
    assert sent[0]["to"] == "+33612345678"


def test_faq_scheduled_send_then_cancel(stack: Stack, phone: Phone) -> None:
    when = (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    reply = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers=stack.auth,
        json={
            "to": "+33612345678",
            "message": "Rappel de rendez-vous demain",
            "scheduled_at": when,
        },
    )
    assert reply.status_code == 200, reply.text
    message_id = reply.json()["message_id"]
    assert _status(stack, message_id)["status"] == "queued"
    cancelled = httpx.delete(f"{stack.base_url}/v1/sms/{message_id}", headers=stack.auth)
    assert cancelled.status_code == 200
    assert cancelled.json() | {"message": ""} == {
        "success": True,
        "message": "",
        "message_id": message_id,
        "status": "cancelled",
    }
    assert _status(stack, message_id)["status"] == "cancelled"


def test_cancel_of_a_sent_message_is_refused(stack: Stack, phone: Phone) -> None:
    reply = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612345678", "message": "déjà parti"},
    )
    message_id = reply.json()["message_id"]
    wait_for(lambda: _status(stack, message_id)["status"] in {"sent", "delivered"}, 20, "sent")
    refused = httpx.delete(f"{stack.base_url}/v1/sms/{message_id}", headers=stack.auth)
    assert refused.status_code == 400
    assert refused.json()["success"] is False
    assert refused.json()["error"]["code"] == "CANNOT_CANCEL_MESSAGE"


def test_segments_and_encoding(stack: Stack, phone: Phone) -> None:
    long = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612345678", "message": "a" * 1600},
    ).json()
    assert long["segments"] == 11
    assert long["encoding"] == "GSM7"
    emoji = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612345678", "message": "Merci 🎉"},
    ).json()
    assert emoji["encoding"] == "UCS2"
    assert emoji["segments"] == 1
    too_long = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612345678", "message": "a" * 1601},
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["code"] == "MESSAGE_TOO_LONG"
    assert "1600" in too_long.json()["error"]["message"]


def test_bulk_limits_and_atomicity(stack: Stack, phone: Phone) -> None:
    numbers = [f"+336123456{i:02d}" for i in range(100)]
    too_many = httpx.post(
        f"{stack.base_url}/v1/sms/send-bulk",
        headers=stack.auth,
        json={"recipients": [*numbers, "+33612345699"], "message": "x"},
    )
    assert too_many.status_code == 400
    assert too_many.json()["error"]["code"] == "TOO_MANY_RECIPIENTS"

    before = _history_total(stack)
    bad = list(numbers)
    bad[57] = "+33 12"
    rejected = httpx.post(
        f"{stack.base_url}/v1/sms/send-bulk",
        headers=stack.auth,
        json={"recipients": bad, "message": "promo", "scheduled_at": _tomorrow()},
    )
    assert rejected.status_code == 400
    assert rejected.json()["error"]["code"] == "INVALID_PHONE_NUMBER"
    assert "recipients[57]" in rejected.json()["error"]["message"]
    assert _history_total(stack) == before


def test_same_idempotency_key_creates_one_message(stack: Stack, phone: Phone) -> None:
    before = _history_total(stack)
    headers = dict(stack.auth, **{"Idempotency-Key": "order-1234-confirmation"})
    payload = {"to": "+33612345678", "message": "Commande confirmée", "scheduled_at": _tomorrow()}
    first = httpx.post(f"{stack.base_url}/v1/sms/send", headers=headers, json=payload).json()
    second = httpx.post(f"{stack.base_url}/v1/sms/send", headers=headers, json=payload).json()
    assert first["message_id"] == second["message_id"]
    assert _history_total(stack) == before + 1
    clash = httpx.post(
        f"{stack.base_url}/v1/sms/send", headers=headers, json=dict(payload, message="autre texte")
    )
    assert clash.status_code == 409
    assert clash.json()["error"]["code"] == "IDEMPOTENCY_KEY_REUSED"


def test_zimsend_python_wrapper_works_with_only_the_base_url_changed(
    stack: Stack, phone: Phone
) -> None:
    client = ZimSendClient(stack.api_key, stack.client_id, base_url=f"{stack.base_url}/v1")
    assert client.test_connection()["client_id"] == stack.client_id
    sent = client.send_sms("+33612345678", "Votre colis arrive", priority=2, metadata={"ref": "A1"})
    assert sent["status"] == "queued"
    wait_for(
        lambda: client.get_status(sent["message_id"])["status"] == "delivered", 20, "delivered"
    )
    bulk = client.send_bulk_sms(["+33612345670", "+33612345671"], "Soldes !")
    assert bulk["total_recipients"] == 2
    assert len(bulk["messages"]) == 2
    scheduled = client.send_sms("+33612345678", "plus tard", scheduled_at=_tomorrow())
    assert client.cancel_message(scheduled["message_id"])["status"] == "cancelled"
    history = client.get_history(
        limit=100, from_date="2025-01-01", to_date=dt.date.today().isoformat()
    )
    assert history["pagination"]["total_items"] >= 4
    assert client.get_stats()["stats"]["total_sent"] >= 1
    with pytest.raises(ZimSendError) as info:
        client.send_sms("0612345678", "sans indicatif")
    assert info.value.code == "INVALID_PHONE_NUMBER"
    assert info.value.status == 400


def _tomorrow() -> str:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _history_total(stack: Stack) -> int:
    reply = httpx.get(f"{stack.base_url}/v1/sms/history", headers=stack.auth, params={"limit": 1})
    assert reply.status_code == 200, reply.text
    return int(reply.json()["pagination"]["total_items"])


def test_presence_through_envoys_phone_listener(
    stack: Stack, zimsend_env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 4 through the edge: online within a second of connecting via Envoy's phone port;
    after kill -9 of the agent, offline within the heartbeat window (1 s x 3 here), with
    device.connected then device.disconnected(CONNECTION_LOST) in the outbox."""
    import signal

    from _devices import ServerDb

    created = httpx.post(
        f"{stack.base_url}/v1/devices", headers=stack.auth, json={"name": "presence"}
    ).json()
    device_id = created["device_id"]
    agent = start_agent(
        zimsend_env,
        stack.envoy.device_target,
        stack.client_id,
        device_id,
        created["device_password"],
        tmp_path,
        name="presence-agent",
    )
    with agent:
        agent.wait_until(lambda: "connected to" in agent.output(), 30, what="connected")
        wait_for(lambda: _device(stack, device_id)["status"] == "online", 1.0, "online in 1 s")
        agent.kill(signal.SIGKILL)
        started = time.monotonic()
        wait_for(lambda: _device(stack, device_id)["status"] == "offline", 10, "offline")
        assert time.monotonic() - started <= 3 * 1.0 + 1.5
    db = ServerDb(Path(zimsend_env["ZIMSEND_DATA_DIR"]))
    events = [
        (kind, data.get("reason"))
        for kind, data in db.events(stack.client_id, "device.")
        if data.get("device_id") == device_id
    ]
    assert events == [("device.connected", None), ("device.disconnected", "CONNECTION_LOST")]
