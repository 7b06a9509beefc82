"""A message's own webhook deliveries (issue 14's gap): `GET /v1/webhooks/logs?message_id=`
as a REST client, the SDK (sync and async, REST and gRPC) and `zimsend webhooks logs
--message` see it through the real Envoy, with a real simulated phone sending, a real
`zimsend worker` delivering and the FAQ's Node.js receiver answering; and migration 0009
naming the message of events stored before it, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from _devices import wait_for
from _processes import ZIMSEND
from _receivers import Receiver, body_of, start_worker
from conftest import Admin, Stack

from zimsend.client import AsyncZimSend, ZimSend
from zimsend.server.storage import Database

SECRET = "whsec_" + "M" * 43 + "="
EVENTS = ["sms.sent", "sms.delivered"]


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("message-logs-data"),
        TEST_PEPPER,
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",
        ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS="[0,1,2]",
    )


def _logs(http: httpx.Client, **params: Any) -> dict[str, Any]:
    reply = http.get("/v1/webhooks/logs", params={"limit": 100, **params})
    assert reply.status_code == 200, reply.text
    return dict(reply.json())


def _delivered_events(receiver: Receiver) -> dict[str, dict[str, str]]:
    """{message_id: {event type: event_id}} of what the receiver got."""
    got: dict[str, dict[str, str]] = {}
    for record in receiver.records():
        body = json.loads(body_of(record))
        got.setdefault(body["data"]["message_id"], {})[body["event"]] = body["event_id"]
    return got


@pytest.mark.slow
def test_a_message_s_logs_are_exactly_its_own_deliveries_for_its_own_client(
    stack: Stack,
    admin: Admin,
    http: httpx.Client,
    agent_outbox: Path,
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    with Receiver(tmp_path, secret=SECRET) as receiver, start_worker(zimsend_env, tmp_path):
        hook = http.post(
            "/v1/webhooks/configure", json={"url": receiver.url, "events": EVENTS, "secret": SECRET}
        )
        assert hook.status_code == 200, hook.text
        webhook_id = hook.json()["webhook_id"]
        ids = []
        for to, text in (("+33612345671", "Votre colis arrive"), ("+33612345672", "Rendez-vous")):
            sent = http.post("/v1/sms/send", json={"to": to, "message": text})
            assert sent.status_code == 200, sent.text
            ids.append(sent.json()["message_id"])
        mine, other = ids
        receiver.wait_for(
            lambda _: all(set(_delivered_events(receiver).get(i, {})) >= set(EVENTS) for i in ids),
            90,
            "sms.sent and sms.delivered of both",
        )
        received = _delivered_events(receiver)

        # The attempt is logged right after the receiver answers: wait for both rows.
        def both_logged() -> dict[str, Any] | None:
            page = _logs(http, message_id=mine)
            return page if len(page["logs"]) >= 2 else None

        page = wait_for(both_logged, 30, f"both deliveries of {mine} in the logs", step=0.2)
        logs = page["logs"]
        assert page["pagination"]["total_items"] == 2
        assert {log["event"]: log["event_id"] for log in logs} == received[mine]
        for log in logs:
            assert log["message_id"] == mine
            assert (log["success"], log["response_status"], log["attempt"]) == (True, 200, 1)
            assert (log["url"], log["webhook_id"]) == (receiver.url, webhook_id)
        assert [log["event"] for log in logs] == ["sms.delivered", "sms.sent"]  # newest first
        theirs = _logs(http, message_id=other)["logs"]
        assert {log["event_id"] for log in theirs} == set(received[other].values())
        unfiltered = {log["event_id"]: log["message_id"] for log in _logs(http)["logs"]}
        assert {unfiltered[e] for e in received[mine].values()} == {mine}

        # Another client asking for this message's id sees an empty page, like any filter.
        client = admin("create-client", "--name", "someone else")
        key = admin("create-key", "--client-id", client["client_id"], "--name", "rest")
        foreign = httpx.get(
            f"{stack.base_url}/v1/webhooks/logs",
            params={"message_id": mine},
            timeout=15,
            headers={"X-Client-ID": client["client_id"], "X-API-Key": key["api_key"]},
        )
        assert foreign.status_code == 200, foreign.text
        assert foreign.json().get("logs", []) == []
        assert foreign.json()["pagination"]["total_items"] == 0
        assert _logs(http, message_id="msg_0000000000000000").get("logs", []) == []

        # Something that cannot be a message id is refused, naming the field.
        bad = http.get("/v1/webhooks/logs", params={"message_id": "m" * 65})
        assert bad.status_code == 400, bad.text
        assert bad.json()["error"]["code"] == "INVALID_REQUEST"
        assert "message_id" in bad.json()["error"]["message"]

        _sdk_and_cli_see_the_same(stack, mine, received[mine])


def _sdk_and_cli_see_the_same(stack: Stack, mine: str, events: dict[str, str]) -> None:
    for transport in ("rest", "grpc"):
        with ZimSend(
            api_key=stack.api_key,
            client_id=stack.client_id,
            base_url=stack.base_url,
            transport=transport,
        ) as zs:
            page = zs.webhooks.logs(message_id=mine)
        assert {log.event: log.event_id for log in page.items} == events, transport
        assert {log.message_id for log in page.items} == {mine}, transport

    async def from_async() -> dict[str, str]:
        async with AsyncZimSend(
            api_key=stack.api_key, client_id=stack.client_id, base_url=stack.base_url
        ) as zs:
            page = await zs.webhooks.logs(message_id=mine)
        return {log.event: log.event_id for log in page.items}

    assert asyncio.run(from_async()) == events

    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMSEND_")}
    env.update(
        ZIMSEND_BASE_URL=f"{stack.base_url}/v1",
        ZIMSEND_CLIENT_ID=stack.client_id,
        ZIMSEND_API_KEY=stack.api_key,
        XDG_CONFIG_HOME="/nonexistent",
    )

    def cli(*args: str) -> str:
        done = subprocess.run(
            [ZIMSEND, *args], capture_output=True, text=True, env=env, timeout=120
        )
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        return done.stdout

    listed = json.loads(cli("webhooks", "logs", "--message", mine, "--json"))
    assert {log["event"]: log["event_id"] for log in listed} == events
    assert {log["message_id"] for log in listed} == {mine}
    table = cli("webhooks", "logs", "--message", mine)
    assert "MESSAGE ID" in table.splitlines()[0].upper()
    assert all(event_id in table for event_id in events.values())
    status = json.loads(cli("sms", "status", mine, "--webhooks", "--json"))
    assert status["message_id"] == mine
    assert {log["event"]: log["event_id"] for log in status["webhooks"]} == events
    shown = cli("sms", "status", mine, "--webhooks")
    assert all(event_id in shown for event_id in events.values())


# --- migration 0009 ---------------------------------------------------------------------------


def test_migration_0009_names_the_message_of_events_stored_before_it(database_url: str) -> None:
    db = Database.from_url(database_url)
    try:
        db.migrate("0008")
        now = dt.datetime.now(dt.UTC)
        clients = sa.table(
            "clients",
            sa.column("id"),
            sa.column("name"),
            sa.column("created_at", sa.DateTime(timezone=True)),
        )
        events = sa.table(
            "outbox_events",
            *(sa.column(c) for c in ("id", "client_id", "event_type", "status", "attempts")),
            sa.column("payload", sa.JSON()),
            sa.column("created_at", sa.DateTime(timezone=True)),
            sa.column("next_attempt_at", sa.DateTime(timezone=True)),
        )
        before = {
            "evt_sent": ("sms.sent", {"message_id": "msg_a", "status": "sent"}),
            "evt_otp": ("otp.verified", {"otp_id": "otp_1", "message_id": "msg_b"}),
            "evt_otp_no_sms": ("otp.verified", {"otp_id": "otp_2", "message_id": None}),
            "evt_inbound": ("sms.received", {"id": "in_1", "from": "+33612345678"}),
            "evt_device": ("device.connected", {"device_id": "dev_1"}),
        }
        with db.engine.begin() as conn:
            conn.execute(clients.insert().values(id="client_m", name="m", created_at=now))
            conn.execute(
                events.insert(),
                [
                    {
                        "id": event_id,
                        "client_id": "client_m",
                        "event_type": kind,
                        "status": "pending",
                        "attempts": 0,
                        "payload": data,
                        "created_at": now,
                        "next_attempt_at": now,
                    }
                    for event_id, (kind, data) in before.items()
                ],
            )
        db.migrate()
        with db.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, message_id FROM outbox_events"))
            named: dict[str, str | None] = {key: value for key, value in rows}
            indexes = {ix["name"] for ix in sa.inspect(conn).get_indexes("outbox_events")}
        assert named == {
            "evt_sent": "msg_a",
            "evt_otp": "msg_b",
            "evt_otp_no_sms": None,
            "evt_inbound": None,
            "evt_device": None,
        }
        assert "ix_outbox_events_client_id_message_id" in indexes
    finally:
        db.dispose()
