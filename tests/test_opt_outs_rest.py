"""Opt-outs (issue 16 item 3) as a REST client sees them through the real Envoy, with a real
simulated phone (the agent) sending and a hand-driven phone stream (RawPhone, through Envoy's
phone listener) receiving the recipient's "Stop" and "START"; webhooks go through a real
`zimsend worker` to the FAQ's Node.js receiver."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from _devices import RawPhone, outbox_lines, wait_for
from _processes import free_port
from _receivers import Receiver, body_of, start_worker
from conftest import Admin, Stack

from zimsend.v1 import device_link_pb2 as link_pb

pytestmark = pytest.mark.slow
TO = "+33612345678"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("opt-outs-data"),
        TEST_PEPPER,
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",
    )


@pytest.fixture(scope="module")
def inbox_phone(stack: Stack, admin: Admin) -> dict[str, str]:
    """A second device whose stream the test drives to report inbound SMS."""
    return dict(
        admin(
            "create-device",
            "--client-id",
            stack.client_id,
            "--name",
            "inbox",
            "--server-address",
            stack.envoy.device_target,
            "--no-qr",
        )
    )


def _get(stack: Stack, path: str) -> dict[str, Any]:
    return dict(httpx.get(f"{stack.base_url}{path}", headers=stack.auth, timeout=15).json())


def _receive(stack: Stack, phone: dict[str, str], sender: str, text: str, report_id: str) -> None:
    """The phone reports an inbound SMS and hangs up once the server has stored it (so it never
    takes a message meant for the agent)."""
    raw = RawPhone(
        stack.envoy.device_target, stack.client_id, phone["device_id"], phone["device_password"]
    )
    try:
        raw.hello()
        inbound = link_pb.InboundSmsReport(report_id=report_id, body=text, sim_slot=0)
        setattr(inbound, "from", sender)
        raw.send(inbound=inbound)
        assert list(raw.expect("report_ack", timeout=30).report_ack.report_ids) == [report_id]
    finally:
        raw.close()


def _listed(http: httpx.Client, number: str) -> list[dict[str, Any]]:
    body = http.get("/v1/opt-outs", params={"phone_number": number}).json()
    return list(body["opt_outs"])


def test_stop_refuses_sends_start_allows_them_again_and_both_webhooks_arrive(
    stack: Stack,
    http: httpx.Client,
    agent_outbox: Path,
    inbox_phone: dict[str, str],
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    port = free_port()
    hook = http.post(
        "/v1/webhooks/configure",
        json={"url": f"http://127.0.0.1:{port}/hooks", "events": ["sms.opted_out", "sms.opted_in"]},
    )
    assert hook.status_code == 200, hook.text
    with (
        start_worker(zimsend_env, tmp_path),
        Receiver(tmp_path, secret=hook.json()["secret"], port=port) as receiver,
    ):
        before = http.post("/v1/sms/send", json={"to": TO, "message": "Votre colis arrive"})
        assert before.status_code == 200, before.text
        wait_for(
            lambda: any(line["to"] == TO for line in outbox_lines(agent_outbox)),
            30,
            "the first message sent by the agent",
        )

        _receive(stack, inbox_phone, TO, "Stop", "in-stop-1")
        (entry,) = wait_for(lambda: _listed(http, TO), 30, "the number on the opt-out list")
        assert entry["source"] == "keyword"
        assert entry["keyword"] == "Stop"
        assert entry["device_id"] == inbox_phone["device_id"]

        refused = http.post("/v1/sms/send", json={"to": "+33 6 12 34 56 78", "message": "Promo"})
        assert refused.status_code == 400, refused.text
        body = refused.json()
        assert body["success"] is False
        assert body["error"]["code"] == "RECIPIENT_OPTED_OUT"
        assert "(to)" in body["error"]["message"]
        assert body["code"] == 9  # FAILED_PRECONDITION, for gRPC-gateway tooling

        # Bulk stays atomic: the request is refused whole, naming the opted-out recipient.
        bulk = http.post(
            "/v1/sms/send-bulk", json={"recipients": ["+33698765432", TO], "message": "Soldes"}
        )
        assert bulk.status_code == 400, bulk.text
        assert bulk.json()["error"]["code"] == "RECIPIENT_OPTED_OUT"
        assert "recipients[1]" in bulk.json()["error"]["message"]
        queued = http.get("/v1/sms/history", params={"to": "+33698765432"}).json()
        assert queued["pagination"]["total_items"] == 0

        _receive(stack, inbox_phone, TO, "  START ", "in-start-1")
        wait_for(lambda: _listed(http, TO) == [], 30, "the number off the opt-out list")
        again = http.post("/v1/sms/send", json={"to": TO, "message": "Votre colis est là"})
        assert again.status_code == 200, again.text
        again_id = again.json()["message_id"]
        wait_for(
            lambda: any(line["message_id"] == again_id for line in outbox_lines(agent_outbox)),
            30,
            "the message after START sent by the agent",
        )

        # Deliveries run concurrently: they may arrive in either order (and a retried attempt
        # twice); each event once by event_id, in the order they happened.
        records = receiver.wait_for(
            lambda r: {x["event"] for x in r} >= {"sms.opted_out", "sms.opted_in"},
            what="both opt-out webhooks",
        )
        assert all(r["verified"] for r in records)
        events = sorted(
            {e["event_id"]: e for e in (json.loads(body_of(r)) for r in records)}.values(),
            key=lambda e: str(e["timestamp"]),
        )
        assert [e["event"] for e in events] == ["sms.opted_out", "sms.opted_in"]
        out, back = (e["data"] for e in events)
        assert out["phone_number"] == back["phone_number"] == TO
        assert (out["source"], out["keyword"]) == ("keyword", "Stop")
        assert (back["source"], back["keyword"]) == ("keyword", "START")
        assert out["device_id"] == inbox_phone["device_id"]
        assert out["opted_out_at"]
        assert back["opted_in_at"]
        # The SDK's helper verifies a real delivery and types its data.
        from zimsend.client import OptOutEventData, verify_webhook

        record = next(r for r in records if r["event"] == "sms.opted_out")
        headers = {k: v for k, v in record["headers"].items() if v is not None}
        typed = verify_webhook(body_of(record), headers, hook.json()["secret"]).data
        assert isinstance(typed, OptOutEventData)
        assert (typed.phone_number, typed.source, typed.keyword) == (TO, "keyword", "Stop")
        assert typed.opted_out_at is not None
        # The inbound texts stay in the inbox like any other.
        inbox = http.get("/v1/sms/inbox").json()["data"]
        assert {m["message"] for m in inbox if m["from"] == TO} >= {"Stop", "  START "}


def test_stop_fails_what_is_still_queued_to_the_number_with_a_webhook(
    stack: Stack,
    http: httpx.Client,
    agent_outbox: Path,
    inbox_phone: dict[str, str],
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """A message scheduled to a number that then texts STOP never leaves: it fails with
    OPTED_OUT (SPEC's BLOCKED_NUMBER) and its `sms.failed` webhook says why; a message to
    another number stays queued."""
    port = free_port()
    hook = http.post(
        "/v1/webhooks/configure",
        json={"url": f"http://127.0.0.1:{port}/failed", "events": ["sms.failed"]},
    )
    assert hook.status_code == 200, hook.text
    later = (dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)).isoformat()
    with (
        start_worker(zimsend_env, tmp_path),
        Receiver(tmp_path, secret=hook.json()["secret"], port=port) as receiver,
    ):
        scheduled = http.post(
            "/v1/sms/send",
            json={"to": TO, "message": "Rappel: rendez-vous demain", "scheduled_at": later},
        )
        assert scheduled.status_code == 200, scheduled.text
        message_id = scheduled.json()["message_id"]
        other = http.post(
            "/v1/sms/send", json={"to": "+33698000010", "message": "Rappel", "scheduled_at": later}
        ).json()
        try:
            _receive(stack, inbox_phone, TO, "STOP", "in-stop-queued")
            failed = wait_for(
                lambda: (
                    (s := http.get(f"/v1/sms/status/{message_id}").json())["status"] == "failed"
                    and s
                ),
                30,
                "the scheduled message failed by the STOP",
            )
            assert failed["error"]["reason"] == "OPTED_OUT"
            assert failed["error"]["code"] == "BLOCKED_NUMBER"
            assert failed["error"]["retryable"] is False
            assert "opted out" in failed["error"]["hint"]
            assert http.get(f"/v1/sms/status/{other['message_id']}").json()["status"] == "queued"

            records = receiver.wait_for(
                lambda r: any(
                    json.loads(body_of(x))["data"]["message_id"] == message_id for x in r
                ),
                what="the sms.failed webhook",
            )
            [event] = [
                e
                for e in (json.loads(body_of(r)) for r in records)
                if e["data"]["message_id"] == message_id
            ][:1]
            assert event["event"] == "sms.failed"
            assert event["data"]["error"]["reason"] == "OPTED_OUT"
            assert event["data"]["error"]["code"] == "BLOCKED_NUMBER"
            assert all(line["message_id"] != message_id for line in outbox_lines(agent_outbox))
        finally:
            _receive(stack, inbox_phone, TO, "START", "in-start-queued")
            http.delete(f"/v1/sms/{other['message_id']}")
            wait_for(lambda: _listed(http, TO) == [], 30, "the number off the list again")


def test_the_api_adds_lists_and_removes_numbers(http: httpx.Client) -> None:
    number = "+33698000001"
    added = http.post("/v1/opt-outs", json={"phone_number": "+33 6 98 00 00 01"})
    assert added.status_code == 200, added.text
    assert added.json()["created"] is True
    assert added.json()["opt_out"]["phone_number"] == number
    assert added.json()["opt_out"]["source"] == "api"
    again = http.post("/v1/opt-outs", json={"phone_number": number}).json()
    assert again["created"] is False

    listed = http.get("/v1/opt-outs", params={"limit": 100}).json()
    assert listed["success"] is True
    assert number in [o["phone_number"] for o in listed["opt_outs"]]
    assert listed["pagination"]["per_page"] == 100

    assert http.post("/v1/sms/send", json={"to": number, "message": "x"}).status_code == 400
    removed = http.delete("/v1/opt-outs/%2B33698000001")
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"success": True, "phone_number": number}
    gone = http.delete(f"/v1/opt-outs/{number}")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "OPT_OUT_NOT_FOUND"
    http.post("/v1/opt-outs", json={"phone_number": number})
    assert http.delete(f"/v1/opt-outs/{number}").status_code == 200  # a literal + works too


@pytest.mark.parametrize("value", ["0612345678", "+3361", "", "+33 6 12 AB"])
def test_a_bad_number_is_400_naming_the_field(http: httpx.Client, value: str) -> None:
    response = http.post("/v1/opt-outs", json={"phone_number": value})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"].startswith("phone_number: ")


def test_opt_outs_belong_to_one_client(stack: Stack, http: httpx.Client, admin: Admin) -> None:
    other = admin("create-client", "--name", "other")
    key = admin("create-key", "--client-id", other["client_id"], "--name", "k")
    headers = {"X-API-Key": key["api_key"], "X-Client-ID": other["client_id"]}
    http.post("/v1/opt-outs", json={"phone_number": "+33698000002"})
    theirs = httpx.get(f"{stack.base_url}/v1/opt-outs", headers=headers, timeout=15).json()
    assert theirs["opt_outs"] == []
    removed = httpx.delete(
        f"{stack.base_url}/v1/opt-outs/+33698000002", headers=headers, timeout=15
    )
    assert removed.status_code == 404


def test_otps_reach_opted_out_numbers_only_when_the_client_exempts_them(
    http: httpx.Client,
    agent_outbox: Path,
) -> None:
    number = "+33698000003"
    http.post("/v1/opt-outs", json={"phone_number": number})
    refused = http.post("/v1/sms/send-otp", json={"to": number})
    assert refused.status_code == 400, refused.text
    assert refused.json()["error"]["code"] == "RECIPIENT_OPTED_OUT"

    patched = http.patch("/v1/settings", json={"opt_outs": {"exempt_otp": True}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["settings"]["opt_outs"]["exempt_otp"] is True
    try:
        sent = http.post("/v1/sms/send-otp", json={"to": number})
        assert sent.status_code == 200, sent.text
        # Only the OTP: an ordinary message to the number is still refused.
        assert http.post("/v1/sms/send", json={"to": number, "message": "x"}).status_code == 400
    finally:
        http.patch("/v1/settings", json={"opt_outs": {}})


def test_client_keywords_replace_the_defaults(
    stack: Stack, http: httpx.Client, inbox_phone: dict[str, str]
) -> None:
    patched = http.patch(
        "/v1/settings",
        json={"opt_outs": {"stop_keywords": ["HALT", "Fin"], "start_keywords": ["REPRENDRE"]}},
    )
    assert patched.status_code == 200, patched.text
    try:
        assert patched.json()["settings"]["opt_outs"]["stop_keywords"] == ["HALT", "Fin"]
        _receive(stack, inbox_phone, "+33698000004", "stop", "in-kw-1")
        _receive(stack, inbox_phone, "+33698000005", " fin ", "in-kw-2")
        wait_for(lambda: _listed(http, "+33698000005"), 30, "FIN listed the sender")
        assert _listed(http, "+33698000004") == []  # STOP is no longer a keyword here
    finally:
        reset = http.patch("/v1/settings", json={"opt_outs": {}}).json()
        assert reset["settings"]["opt_outs"]["stop_keywords"][0] == "STOP"


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_the_sdk_manages_opt_outs_and_names_the_refusal(
    stack: Stack, agent_outbox: Path, transport: str
) -> None:
    from zimsend.client import InvalidRequestError, NotFoundError, OptOut, ZimSend

    number = "+3369800001" + ("6" if transport == "rest" else "7")
    with ZimSend(
        api_key=stack.api_key,
        client_id=stack.client_id,
        base_url=stack.base_url,
        transport=transport,
    ) as zs:
        added = zs.opt_outs.add(number)
        assert added.created is True
        assert added.opt_out == OptOut(number, "api", "", "", added.opt_out.created_at)
        assert zs.opt_outs.add(number).created is False
        page = zs.opt_outs.list(phone_number=number)
        assert [o.phone_number for o in page.items] == [number]
        with pytest.raises(InvalidRequestError) as refused:
            zs.sms.send(number, "Promo")
        assert refused.value.code == "RECIPIENT_OPTED_OUT"
        assert refused.value.http_status == 400
        assert [v.field for v in refused.value.violations] == ["to"]
        zs.opt_outs.remove(number)
        with pytest.raises(NotFoundError):
            zs.opt_outs.remove(number)
        assert zs.sms.send(number, "Bonjour").message_id.startswith("msg_")


def test_the_cli_lists_adds_and_removes(stack: Stack, tmp_path: Path) -> None:
    import os
    import subprocess

    from _processes import ZIMSEND

    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path),
        "ZIMSEND_BASE_URL": stack.base_url,
        "ZIMSEND_CLIENT_ID": stack.client_id,
        "ZIMSEND_API_KEY": stack.api_key,
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [ZIMSEND, "opt-outs", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    added = cli("add", "+33 6 98 00 00 20")
    assert added.returncode == 0, added.stderr
    assert added.stdout.strip() == "+33698000020 added"
    listed = json.loads(cli("list", "--number", "+33698000020", "--json").stdout)
    assert [o["phone_number"] for o in listed] == ["+33698000020"]
    assert listed[0]["source"] == "api"
    assert cli("remove", "+33698000020").returncode == 0
    again = cli("remove", "+33698000020")
    assert again.returncode == 1
    assert "OPT_OUT_NOT_FOUND" in again.stderr
    bad = cli("add", "0612")
    assert bad.returncode == 1
    assert "phone_number:" in bad.stderr
