"""The failure-code table and the failover and budget rules, on both engines, without
processes (tests/test_failover.py shows the same through Envoy with real phones).

- The table (`failures.proto`'s options) is what SPEC §7 and issue 16 ask: public codes are
  SPEC's, exactly the six pre-send codes may re-route, every code has a hint and a message, and
  the agent and the server read the same names.
- `apply_part_reports` with failover: a pre-send failure re-queues the message until the
  client's maximum, then fails it; a multi-part message is re-routed only when every part
  failed before leaving; an ambiguous failure is final at once.
- `claim_round` with budgets: a phone gets only what fits its per-SIM budget and is told how
  long to wait; a cooling-down phone gets nothing.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlmodel import col, select

from zimsend.agent.senders.base import BEFORE_SEND_CODES, ERROR_CODES
from zimsend.server import accounts, failures
from zimsend.server.accounts import credentials
from zimsend.server.config import Settings
from zimsend.server.devicelink.assignment import ClaimRequest, claim_round
from zimsend.server.devicelink.budgets import Budget
from zimsend.server.devicelink.transitions import Failover, PartReport, apply_part_reports
from zimsend.server.storage import (
    Client,
    Database,
    Device,
    DeviceSend,
    Message,
    MessagePart,
    OutboxEvent,
    claim_due_messages,
    utcnow,
)
from zimsend.v1 import failures_pb2

PEPPER = b"failover-rules-test-pepper-0123456"
SPEC_CODES = {
    "NETWORK_ERROR",
    "INVALID_NUMBER",
    "NO_CREDIT",
    "BLOCKED_NUMBER",
    "DEVICE_ERROR",
    "TIMEOUT",
    "EXPIRED",
}
PRE_SEND = {
    "NO_SERVICE",
    "RADIO_OFF",
    "SIM_MISSING",
    "SIM_PIN_REQUIRED",
    "SEND_LIMIT",
    "MODEM_REFUSED",
}
#: Given by the server only, never by a phone.
SERVER_ONLY = {"EXPIRED", "OPTED_OUT"}
FAILOVER = Failover(
    max_attempts=2, cooldown=dt.timedelta(seconds=60), send_limit_cooldown=dt.timedelta(seconds=900)
)


# --- the table -------------------------------------------------------------------------------


def test_public_codes_are_spec_s_and_only_pre_send_codes_reroute() -> None:
    names = set(failures_pb2.FailureCode.keys()) - {"FAILURE_CODE_UNSPECIFIED"}
    assert names == SPEC_CODES | PRE_SEND | SERVER_ONLY
    for name in names:
        row = failures.info(name)
        assert row.public_code in SPEC_CODES
        assert row.before_send == (name in PRE_SEND)
        assert row.hint
        assert row.message
    for name in SPEC_CODES:
        assert failures.info(name).public_code == name
    assert failures.info("NO_SERVICE").public_code == "NETWORK_ERROR"
    assert failures.info("SIM_MISSING").public_code == "DEVICE_ERROR"
    assert not failures.info("INVALID_NUMBER").retryable
    assert not failures.info("BLOCKED_NUMBER").retryable
    assert failures.info("OPTED_OUT").public_code == "BLOCKED_NUMBER"
    assert not failures.info("OPTED_OUT").retryable


def test_the_agent_reports_the_server_s_names() -> None:
    assert set(ERROR_CODES) == (SPEC_CODES - {"EXPIRED"}) | PRE_SEND
    assert set(BEFORE_SEND_CODES) == PRE_SEND


def test_unknown_codes_are_device_errors_and_hints_name_the_phone() -> None:
    assert failures.normalise("no_credit") == "NO_CREDIT"
    assert failures.normalise("GENERIC_FAILURE") == "DEVICE_ERROR"
    assert failures.normalise("") == "DEVICE_ERROR"
    error = failures.error_payload("NO_CREDIT", None, "device_0123")
    assert error == {
        "code": "NO_CREDIT",
        "message": "The SIM has no credit left.",
        "reason": "NO_CREDIT",
        "retryable": True,
        "hint": "Top up the SIM of phone device_0123, then resend.",
    }


# --- failover --------------------------------------------------------------------------------


def _tenant(db: Database, segments: list[int]) -> tuple[str, str, list[str]]:
    now = utcnow()
    client = accounts.create_client(db, "failover")
    device = accounts.create_device(db, PEPPER, client.id, "p", server_address="x:1").device
    ids = []
    with db.write() as session:
        for n, parts in enumerate(segments):
            message = Message(
                id=credentials.new_id("msg"),
                client_id=client.id,
                to="+33612345678",
                body=f"hi {n}",
                segments=parts,
                due_at=now - dt.timedelta(seconds=len(segments) - n),
                expires_at=now + dt.timedelta(hours=24),
            )
            session.add(message)
            ids.append(message.id)
    return client.id, device.id, ids


def _claim(db: Database, client_id: str, device_id: str) -> list[str]:
    with db.write() as session:
        return [
            m.id
            for m in claim_due_messages(
                session, client_id=client_id, device_id=device_id, limit=10, now=utcnow()
            )
        ]


def _report(db: Database, client_id: str, device_id: str, *reports: PartReport) -> list[str]:
    with db.write() as session:
        moves = apply_part_reports(
            session, [(client_id, device_id, r) for r in reports], now=utcnow(), failover=FAILOVER
        )
    return [t.new for t in moves]


def _message(db: Database, message_id: str) -> Message:
    with db.session() as session:
        message = session.get(Message, message_id)
        assert message is not None
        return message


def _events(db: Database, client_id: str) -> list[tuple[str, dict[str, object]]]:
    with db.session() as session:
        rows = session.exec(
            select(OutboxEvent)
            .where(col(OutboxEvent.client_id) == client_id)
            .order_by(col(OutboxEvent.created_at))
        )
        return [(e.event_type, e.payload) for e in rows]


def test_a_pre_send_failure_requeues_until_the_client_s_maximum(db: Database) -> None:
    client_id, device_id, [mid] = _tenant(db, [1])
    assert _claim(db, client_id, device_id) == [mid]
    assert _report(
        db, client_id, device_id, PartReport("r1", mid, "failed", error_code="NO_SERVICE")
    ) == ["queued"]
    message = _message(db, mid)
    assert (message.status, message.attempts, message.reroutes) == ("queued", 1, 1)
    assert (message.error_code, message.device_id) == ("NO_SERVICE", device_id)
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        assert device.cooling_down_until is not None
        assert device.cooling_down_until > utcnow() + dt.timedelta(seconds=30)
    [(kind, payload)] = _events(db, client_id)
    assert kind == "sms.rerouted"
    assert payload["rerouted_from"] == device_id
    assert payload["attempts"] == 2
    # The second attempt is the client's last (max 2): the same failure is now final.
    assert _claim(db, client_id, device_id) == [mid]
    assert _report(
        db, client_id, device_id, PartReport("r2", mid, "failed", error_code="NO_SERVICE")
    ) == ["failed"]
    message = _message(db, mid)
    assert (message.status, message.attempts, message.error_code) == ("failed", 1, "NO_SERVICE")
    kind, payload = _events(db, client_id)[-1]
    assert kind == "sms.failed"
    assert payload["error"] == failures.error_payload(
        "NO_SERVICE", message.error_message, device_id
    )
    assert payload["error"]["code"] == "NETWORK_ERROR"


def test_a_resend_starts_a_fresh_count_of_attempts(db: Database, settings: Settings) -> None:
    from zimsend.server.sending import one_message as sending

    client_id, device_id, [mid] = _tenant(db, [1])
    for n in range(2):  # re-routed once, then final (the maximum is 2)
        _claim(db, client_id, device_id)
        _report(
            db, client_id, device_id, PartReport(f"r{n}", mid, "failed", error_code="NO_SERVICE")
        )
    assert _message(db, mid).status == "failed"
    resent = sending.resend(db, settings, client_id, mid)
    assert (resent.status, resent.attempts, resent.reroutes) == ("queued", 2, 0)
    _claim(db, client_id, device_id)
    assert _report(
        db, client_id, device_id, PartReport("r2", mid, "failed", error_code="NO_SERVICE")
    ) == ["queued"]
    assert _message(db, mid).attempts == 3  # shown as attempt 4


def test_the_client_s_own_maximum_wins(db: Database) -> None:
    client_id, device_id, [mid] = _tenant(db, [1])
    with db.write() as session:
        client = session.get(Client, client_id)
        assert client is not None
        client.max_send_attempts = 1
        session.add(client)
    _claim(db, client_id, device_id)
    assert _report(
        db, client_id, device_id, PartReport("r1", mid, "failed", error_code="SIM_MISSING")
    ) == ["failed"]


def test_an_ambiguous_failure_is_final_at_once(db: Database) -> None:
    client_id, device_id, [mid] = _tenant(db, [1])
    _claim(db, client_id, device_id)
    assert _report(
        db, client_id, device_id, PartReport("r1", mid, "failed", error_code="TIMEOUT")
    ) == ["failed"]
    assert _message(db, mid).attempts == 0
    with db.session() as session:
        device = session.get(Device, device_id)
        assert device is not None
        assert device.cooling_down_until is None


def test_a_multi_part_message_reroutes_only_when_no_part_left(db: Database) -> None:
    client_id, device_id, [whole, half] = _tenant(db, [2, 2])
    _claim(db, client_id, device_id)
    # Both parts failed before leaving: re-routed once the second is known.
    assert (
        _report(db, client_id, device_id, PartReport("a0", whole, "failed", 0, 2, "NO_SERVICE"))
        == []
    )
    assert _message(db, whole).status == "processing"
    assert _report(
        db, client_id, device_id, PartReport("a1", whole, "failed", 1, 2, "RADIO_OFF")
    ) == ["queued"]
    with db.session() as session:
        assert (
            session.exec(select(MessagePart).where(col(MessagePart.message_id) == whole)).all()
            == []
        )
    # One part left the phone: the other's pre-send failure cannot re-route it.
    assert _report(
        db,
        client_id,
        device_id,
        PartReport("b0", half, "sent", 0, 2),
        PartReport("b1", half, "failed", 1, 2, "NO_SERVICE"),
    ) == ["failed"]
    assert _message(db, half).error_code == "NO_SERVICE"


# --- budgets ---------------------------------------------------------------------------------


def test_a_claim_takes_only_what_fits_the_sim_s_budget(db: Database) -> None:
    client_id, device_id, ids = _tenant(db, [1, 2, 1, 1])
    with db.write() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.parts_per_minute = 3
        session.add(device)
    request = ClaimRequest(client_id=client_id, device_id=device_id, limit=10)
    result = claim_round(db, PEPPER, [request], utcnow(), budgets=Budget(per_minute=20))
    assert [c.message_id for c in result.commands[device_id]] == ids[:2]  # 1 + 2 parts
    assert 55 < result.waits[device_id] <= 60  # until the first part leaves the minute
    again = claim_round(db, PEPPER, [request], utcnow(), budgets=Budget(per_minute=20))
    assert device_id not in again.commands
    with db.session() as session:
        ledger = session.exec(select(DeviceSend).where(col(DeviceSend.device_id) == device_id))
        assert sorted(row.parts for row in ledger) == [1, 2]


def test_a_cooling_phone_gets_nothing(db: Database) -> None:
    client_id, device_id, _ = _tenant(db, [1])
    with db.write() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.cooling_down_until = utcnow() + dt.timedelta(seconds=120)
        session.add(device)
    request = ClaimRequest(client_id=client_id, device_id=device_id, limit=10)
    result = claim_round(db, PEPPER, [request], utcnow(), budgets=Budget(per_minute=20))
    assert device_id not in result.commands
    assert 100 < result.waits[device_id] <= 120


@pytest.mark.parametrize("parts", [1, 30])
def test_a_message_larger_than_the_budget_goes_alone_into_an_empty_window(
    db: Database,
    parts: int,
) -> None:
    client_id, device_id, ids = _tenant(db, [parts, 1])
    request = ClaimRequest(client_id=client_id, device_id=device_id, limit=10)
    result = claim_round(db, PEPPER, [request], utcnow(), budgets=Budget(per_minute=20))
    taken = [c.message_id for c in result.commands[device_id]]
    assert taken == (ids if parts == 1 else ids[:1])


def test_the_csv_export_shows_spec_s_code_and_the_failure_s_details() -> None:
    import csv
    import io

    from zimsend.server.sending import views

    message = Message(
        id="msg_0000000000000001",
        client_id="client_x",
        to="+33612345678",
        body="hi",
        due_at=utcnow(),
        status="queued",
        device_id="device_0001",
        error_code="NO_SERVICE",
        error_message="no service",
        attempts=1,
    )
    text = views.csv_header() + views.csv_row(message)
    [row] = list(csv.DictReader(io.StringIO(text)))
    assert (row["error_code"], row["error_reason"], row["error_retryable"]) == (
        "NETWORK_ERROR",
        "NO_SERVICE",
        "true",
    )
    assert "device_0001" in row["error_hint"]
    assert (row["attempts"], row["delivery_report_missing"]) == ("2", "false")


@pytest.mark.parametrize(("interval_ms", "taken"), [(None, 20), (0, 25), (1000, 20)])
def test_the_default_budget_is_for_paced_phones(
    db: Database,
    interval_ms: int | None,
    taken: int,
) -> None:
    """Server default 20 parts a minute, pacing 2500 ms: a phone set to send without pacing
    (modems, tests) has only the budget set on it."""
    client_id, device_id, _ = _tenant(db, [1] * 25)
    with db.write() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.send_interval_ms = interval_ms
        session.add(device)
    request = ClaimRequest(client_id=client_id, device_id=device_id, limit=30)
    result = claim_round(
        db, PEPPER, [request], utcnow(), budgets=Budget(per_minute=20), default_interval_ms=2500
    )
    assert len(result.commands[device_id]) == taken
    assert (device_id in result.waits) == (taken < 25)


def test_the_worker_prunes_ledger_rows_older_than_a_day(db: Database) -> None:
    from zimsend.server.devicelink.budgets import prune_ledger

    _, device_id, [mid] = _tenant(db, [1])
    now = utcnow()
    with db.write() as session:
        for age in (dt.timedelta(days=2), dt.timedelta(hours=23)):
            session.add(
                DeviceSend(
                    device_id=device_id, sim_slot=0, handed_at=now - age, parts=1, message_id=mid
                )
            )
    assert prune_ledger(db, now) == 1
    with db.session() as session:
        [left] = session.exec(select(DeviceSend).where(col(DeviceSend.device_id) == device_id))
        assert left.handed_at > now - dt.timedelta(days=1)
