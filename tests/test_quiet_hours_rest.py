"""Quiet hours (issue 16 item 4) through the real Envoy with a real simulated phone: the window
is set to cover the recipient's local time now and end at the next minute, so a normal message
is held (status shows `held_until` and `hold_reason`) and leaves when the window ends, while
urgent messages and OTPs leave at once; a message accepted before the window was turned on is
held by the dispatcher when it becomes due inside it. The rule itself, at any instant, is covered by
tests/test_compliance_rules.py."""

from __future__ import annotations

import datetime as dt
import time
from functools import partial
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest
from _devices import outbox_lines, wait_for

pytestmark = pytest.mark.slow
PARIS = ZoneInfo("Europe/Paris")
TO = "+33612345678"  # Europe/Paris, the only zone of +33
NEW_YORK = "+12025550123"  # America/New_York: 5-6 hours behind Paris


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("quiet-data"),
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",
    )


def _sent(outbox: Path, message_id: str) -> dict[str, Any] | None:
    return next((line for line in outbox_lines(outbox) if line["message_id"] == message_id), None)


def _window_ending_next_minute() -> tuple[str, str, dt.datetime]:
    """(start, end, end as UTC): a window around Paris' local time now that ends at the next
    minute boundary, at least 25 s away (the requests and the urgent sends must all happen
    inside it, on a loaded machine too)."""
    now = dt.datetime.now(PARIS)
    if now.second >= 35:
        time.sleep(61 - now.second)
        now = dt.datetime.now(PARIS)
    minute = now.replace(second=0, microsecond=0)
    start, end = minute - dt.timedelta(minutes=5), minute + dt.timedelta(minutes=1)
    return start.strftime("%H:%M"), end.strftime("%H:%M"), end.astimezone(dt.UTC)


def _utc(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_a_normal_message_waits_for_the_window_end_and_urgent_ones_leave_at_once(
    http: httpx.Client,
    agent_outbox: Path,
) -> None:
    start, end, end_utc = _window_ending_next_minute()
    # Accepted before quiet hours were turned on, due once they are: the dispatcher holds it.
    due = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=8)
    earlier = http.post(
        "/v1/sms/send",
        json={
            "to": TO,
            "message": "Accepted before the window",
            "scheduled_at": due.isoformat().replace("+00:00", "Z"),
        },
    )
    assert earlier.status_code == 200, earlier.text
    earlier_id = earlier.json()["message_id"]
    assert "held_until" not in http.get(f"/v1/sms/status/{earlier_id}").json()
    patched = http.patch(
        "/v1/settings", json={"quiet_hours": {"enabled": True, "start": start, "end": end}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["settings"]["quiet_hours"] == {
        "enabled": True,
        "start": start,
        "end": end,
        "fallback_time_zone": "",
    }
    try:
        normal = http.post("/v1/sms/send", json={"to": TO, "message": "Rappel: RDV demain"})
        assert normal.status_code == 200, normal.text
        assert _utc(normal.json()["estimated_delivery"]) >= end_utc
        held_id = normal.json()["message_id"]
        status = http.get(f"/v1/sms/status/{held_id}").json()
        assert status["status"] == "queued"
        assert status["hold_reason"] == "quiet_hours"
        assert _utc(status["held_until"]) == end_utc

        urgent = http.post(
            "/v1/sms/send", json={"to": TO, "message": "Alerte", "priority": "urgent"}
        ).json()
        otp = http.post("/v1/sms/send-otp", json={"to": TO}).json()
        # A bulk is held per recipient: New York's evening is outside Paris' window.
        bulk = http.post(
            "/v1/sms/send-bulk", json={"recipients": [TO, NEW_YORK], "message": "Offre"}
        ).json()
        paris_id, new_york_id = (m["message_id"] for m in bulk["messages"])
        for message_id in (urgent["message_id"], otp["message_id"], new_york_id):
            wait_for(partial(_sent, agent_outbox, message_id), 30, f"{message_id} sent at once")
        assert dt.datetime.now(dt.UTC) < end_utc, "the window ended before the checks; rerun"
        assert _sent(agent_outbox, held_id) is None
        assert http.get(f"/v1/sms/status/{paris_id}").json()["hold_reason"] == "quiet_hours"
        assert "held_until" not in http.get(f"/v1/sms/status/{new_york_id}").json()
        wait_for(
            lambda: http.get(f"/v1/sms/status/{earlier_id}").json().get("held_until"),
            30,
            "the earlier message held at its due time",
        )
        assert dt.datetime.now(dt.UTC) < end_utc, "the window ended before the checks; rerun"
        earlier_status = http.get(f"/v1/sms/status/{earlier_id}").json()
        assert earlier_status["status"] == "queued"
        assert earlier_status["hold_reason"] == "quiet_hours"
        assert _utc(earlier_status["held_until"]) == end_utc
        assert _sent(agent_outbox, earlier_id) is None

        for message_id in (held_id, paris_id, earlier_id):
            line = wait_for(
                partial(_sent, agent_outbox, message_id), 90, f"{message_id} sent after the window"
            )
            assert dt.datetime.fromisoformat(line["sent_at"]) >= end_utc
        final = http.get(f"/v1/sms/status/{held_id}").json()
        assert final["status"] in ("sent", "delivered")
        assert "held_until" not in final
    finally:
        http.patch("/v1/settings", json={"quiet_hours": {"enabled": False}})


def test_settings_show_defaults_and_refuse_bad_values_naming_each_field(http: httpx.Client) -> None:
    shown = http.get("/v1/settings").json()
    assert shown["success"] is True
    assert shown["settings"]["quiet_hours"]["start"] == "21:00"
    assert shown["settings"]["quiet_hours"]["end"] == "08:00"
    assert shown["settings"]["opt_outs"]["stop_keywords"] == [
        "STOP",
        "STOP ALL",
        "UNSUBSCRIBE",
        "ARRET",
        "ARRÊT",
        "DESABONNER",
    ]
    assert shown["settings"]["opt_outs"]["start_keywords"] == ["START", "UNSTOP"]
    assert shown["settings"]["max_send_attempts"] == 3

    bad = http.patch(
        "/v1/settings",
        json={
            "quiet_hours": {
                "enabled": True,
                "start": "25:00",
                "end": "08:00",
                "fallback_time_zone": "Mars/Olympus",
            },
            "max_send_attempts": 0,
            "opt_outs": {"stop_keywords": ["STOP", " "], "start_keywords": ["stop"]},
        },
    )
    assert bad.status_code == 400, bad.text
    message = bad.json()["error"]["message"]
    for name in (
        "quiet_hours.start",
        "quiet_hours.fallback_time_zone",
        "max_send_attempts",
        "opt_outs.stop_keywords[1]",
        "opt_outs.start_keywords",
    ):
        assert f"{name}: " in message
    same = http.patch("/v1/settings", json={"quiet_hours": {"start": "22:00", "end": "22:00"}})
    assert same.status_code == 400
    assert "quiet_hours.end: must differ from start" in same.json()["error"]["message"]
    assert http.get("/v1/settings").json() == shown  # nothing was written

    changed = http.patch(
        "/v1/settings",
        json={
            "max_send_attempts": 5,
            "quiet_hours": {"enabled": False, "fallback_time_zone": "America/Chicago"},
        },
    ).json()
    assert changed["settings"]["max_send_attempts"] == 5
    assert changed["settings"]["quiet_hours"]["fallback_time_zone"] == "America/Chicago"
    assert changed["settings"]["update_time"]
    assert http.get("/v1/settings").json()["settings"] == changed["settings"]
