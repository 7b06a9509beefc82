"""A real SMS path with a modem: REST through the real Envoy → `zimsend serve` → the phone
stream → `zimsend device run --backend modem` → Gammu (its dummy driver) → Gammu's log, and
back: the network's status report and an inbound SMS put into the fake modem's storage →
`GET /v1/sms/status` delivered, `GET /v1/sms/inbox` and one `sms.received` webhook.

Real processes throughout (server, Envoy, agent, worker, node webhook receiver); Gammu's dummy
driver stands for the modem, which is outside our system. Status reports go through the
driver (the test stores a Status_Report in the modem's inbox, as a network would).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from _devices import start_agent, wait_for
from _gammu import DummyModem
from _processes import free_port
from _processes import zimsend_env as make_env
from _receivers import Receiver, body_of, start_worker
from conftest import Admin, Stack

pytestmark = pytest.mark.slow
TO = "+33612345678"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("modem-data"),
        TEST_PEPPER,
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",  # the test polls status
    )


def test_a_message_leaves_through_the_modem_and_its_report_and_replies_come_back(
    stack: Stack,
    admin: Admin,
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    modem = DummyModem.create(tmp_path / "modem")
    device = admin(
        "create-device",
        "--client-id",
        stack.client_id,
        "--name",
        "usb-modem",
        "--server-address",
        stack.envoy.device_target,
        "--no-qr",
    )
    http = httpx.Client(base_url=stack.base_url, headers=stack.auth, timeout=10)
    port = free_port()
    hook = http.post(
        "/v1/webhooks/configure",
        json={"url": f"http://127.0.0.1:{port}/hooks", "events": ["sms.received", "sms.delivered"]},
    )
    assert hook.status_code == 200, hook.text
    secret = hook.json()["secret"]

    with (
        start_agent(
            zimsend_env,
            stack.envoy.device_target,
            stack.client_id,
            device["device_id"],
            device["device_password"],
            tmp_path,
            "--backend",
            "modem",
            "--gammu-config",
            str(modem.gammurc),
            "--poll-interval",
            "0.2",
            name="modem-agent",
        ) as agent,
        start_worker(zimsend_env, tmp_path),
        Receiver(tmp_path, secret=secret, port=port) as receiver,
    ):
        shown = wait_for(
            lambda: _device(http, device["device_id"], "online"),
            60,
            f"the modem online; agent said:\n{agent.output()[-2000:]}",
        )
        assert shown["capabilities"] == {
            "backend": "modem",
            "delivery_reports": True,
            "inbound_sms": True,
        }
        assert shown["network"] == "home"
        assert shown["signal"] == 2

        long_text = "".join(f"Rappel {i:03d}: rendez-vous demain. " for i in range(60))[:1600]
        unicode_text = "Votre code: 4821 — merci 🙏 Привет"
        sent_ids = {}
        for text in (long_text, unicode_text):
            reply = http.post("/v1/sms/send", json={"to": TO, "message": text})
            assert reply.status_code == 200, reply.text
            sent_ids[text] = reply.json()["message_id"]
        for message_id in sent_ids.values():
            wait_for(lambda mid=message_id: _status(http, mid) == "sent", 30, f"{message_id} sent")

        parts = modem.sent()
        assert {to for to, _ in parts} == {TO}
        joined = "".join(text for _, text in parts)
        assert long_text in joined
        assert unicode_text in joined
        segments = {
            text: http.get(f"/v1/sms/status/{mid}").json()["segments"]
            for text, mid in sent_ids.items()
        }
        assert segments == {long_text: 11, unicode_text: 1}
        assert len(parts) == 12

        # The network confirms every part (the dummy driver numbers them all 255).
        for _ in range(len(parts)):
            modem.status_report(TO, 255)
        for message_id in sent_ids.values():
            wait_for(
                lambda mid=message_id: _status(http, mid) == "delivered",
                30,
                f"{message_id} delivered",
            )

        # Someone answers, in three parts.
        answer = "Oui, je serai là à l'heure prévue. Merci pour le rappel ! " * 3
        modem.receive("+33698765432", answer)
        inbox = wait_for(lambda: _inbox(http), 30, "the answer in the inbox")
        assert [(m["from"], m["message"]) for m in inbox] == [("+33698765432", answer)]
        received = receiver.wait_for(
            lambda records: any(json.loads(body_of(r))["event"] == "sms.received" for r in records),
            what="sms.received",
        )
        wait_for(lambda: modem.storage() == [], 10, "the modem's storage emptied")
        # Nothing is reported twice: a while later the inbox and the webhooks still hold one.
        wait_for(lambda: "inbound SMS from" in agent.output(), 5, "the agent's log line")
        assert len(_inbox(http)) == 1
        events = [json.loads(body_of(r)) for r in receiver.records()]
        assert [
            (e["data"]["from"], e["data"]["message"])
            for e in events
            if e["event"] == "sms.received"
        ] == [("+33698765432", answer)]
        assert received


def _device(http: httpx.Client, device_id: str, status: str) -> dict[str, Any] | None:
    """The device once its status is `status` and a heartbeat told its network."""
    body = http.get(f"/v1/devices/{device_id}").json()
    return body if body.get("status") == status and body.get("network") == "home" else None


def _status(http: httpx.Client, message_id: str) -> str:
    return str(http.get(f"/v1/sms/status/{message_id}").json().get("status"))


def _inbox(http: httpx.Client) -> list[dict[str, Any]]:
    return list(http.get("/v1/sms/inbox").json().get("data", []))
