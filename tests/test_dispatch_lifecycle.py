"""Message lifecycle rules in the database, on both engines (SPEC §3 "Statuses", §7 events).

These exercise `zimsend.server.devicelink.transitions` directly: the same functions the device
link, the simulated device and the expiry sweep use.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlmodel import col, select

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.devicelink.assignment import ensure_simulated_device
from zimsend.server.devicelink.transitions import (
    PartReport,
    apply_part_report,
    expire_overdue_messages,
)
from zimsend.server.storage import (
    DailyAggregate,
    Database,
    Message,
    MessageStatus,
    OutboxEvent,
    claim_due_messages,
    utcnow,
)

PEPPER = b"lifecycle-test-pepper-0123456789"


@pytest.fixture
def setup(db: Database) -> tuple[Database, str, str]:
    client = accounts.create_client(db, "acme")
    device = accounts.create_device(db, PEPPER, client.id, "p", server_address="x:1").device
    return db, client.id, device.id


def queue_message(db: Database, client_id: str, *, segments: int = 1, **fields: Any) -> str:
    now = utcnow()
    message = Message(
        id=credentials.new_id("msg"),
        client_id=client_id,
        to="+33612345678",
        body="hi",
        segments=segments,
        due_at=now,
        expires_at=now + dt.timedelta(hours=24),
        meta={"order": 7},
        **fields,
    )
    with db.write() as session:
        session.add(message)
    return message.id


def claim(db: Database, client_id: str, device_id: str) -> None:
    with db.write() as session:
        assert claim_due_messages(
            session, client_id=client_id, device_id=device_id, limit=10, now=utcnow()
        )


def report(db: Database, client_id: str, device_id: str, **fields: Any) -> list[str]:
    with db.write() as session:
        moves = apply_part_report(
            session,
            client_id=client_id,
            device_id=device_id,
            report=PartReport(**fields),
            now=utcnow(),
        )
    return [m.new for m in moves]


def events(db: Database, client_id: str) -> list[OutboxEvent]:
    with db.session() as session:
        return list(
            session.exec(
                select(OutboxEvent)
                .where(OutboxEvent.client_id == client_id)
                .order_by(col(OutboxEvent.created_at))
            ).all()
        )


def status(db: Database, message_id: str) -> Message:
    with db.session() as session:
        message = session.get(Message, message_id)
        assert message is not None
        return message


def test_a_multipart_message_is_sent_when_all_parts_are_and_fails_on_one_part(
    setup: tuple[Database, str, str],
) -> None:
    db, client_id, device_id = setup
    mid = queue_message(db, client_id, segments=3)
    claim(db, client_id, device_id)

    def r(rid: str, part: int, outcome: str, **kw: Any) -> list[str]:
        return report(
            db,
            client_id,
            device_id,
            report_id=rid,
            message_id=mid,
            part_index=part,
            part_count=3,
            outcome=outcome,
            **kw,
        )

    assert r("a", 0, "sent") == []
    assert r("b", 1, "sent") == []
    assert status(db, mid).status == MessageStatus.PROCESSING
    assert r("c", 2, "sent") == ["sent"]
    assert r("d", 0, "delivered") == []
    assert r("e", 1, "delivered") == []
    assert r("f", 2, "failed", error_code="network_error", error_message="lost") == ["failed"]
    final = status(db, mid)
    assert final.status == "failed"
    assert final.error_code == "NETWORK_ERROR"
    assert final.parts == 3
    assert final.sent_at
    assert final.failed_at
    assert final.delivered_at is None
    kinds = [e.event_type for e in events(db, client_id)]
    assert kinds == ["sms.sent", "sms.failed"]
    failed = events(db, client_id)[1].payload
    assert failed["error"] == {
        "code": "NETWORK_ERROR",
        "message": "lost",
        "reason": "NETWORK_ERROR",
        "retryable": True,
        "hint": "The mobile network refused or lost it; resend later, or from another phone.",
    }
    assert failed["metadata"] == {"order": 7}
    assert failed["failed_at"].endswith("Z")


def test_delivered_before_sent_passes_through_sent_and_counts_per_day(
    setup: tuple[Database, str, str],
) -> None:
    db, client_id, device_id = setup
    mid = queue_message(db, client_id)
    claim(db, client_id, device_id)
    assert report(db, client_id, device_id, report_id="d", message_id=mid, outcome="delivered") == [
        "sent",
        "delivered",
    ]
    assert (
        report(db, client_id, device_id, report_id="d", message_id=mid, outcome="delivered") == []
    )  # the same report again
    assert (
        report(db, client_id, device_id, report_id="late", message_id=mid, outcome="failed") == []
    )  # nothing leaves a final status
    assert [e.event_type for e in events(db, client_id)] == ["sms.sent", "sms.delivered"]
    with db.session() as session:
        row = session.exec(select(DailyAggregate)).one()
    assert (row.device_id, row.sent, row.delivered, row.failed) == (device_id, 1, 1, 0)


def test_reports_about_other_devices_messages_change_nothing(
    setup: tuple[Database, str, str],
) -> None:
    db, client_id, device_id = setup
    other = accounts.create_device(db, PEPPER, client_id, "q", server_address="x:1").device
    mid = queue_message(db, client_id)
    claim(db, client_id, device_id)
    assert report(db, client_id, other.id, report_id="x", message_id=mid, outcome="sent") == []
    assert (
        report(db, client_id, device_id, report_id="y", message_id="msg_unknown", outcome="sent")
        == []
    )
    assert status(db, mid).status == MessageStatus.PROCESSING


def test_expiry_fails_overdue_queued_messages_with_expired(
    setup: tuple[Database, str, str],
) -> None:
    db, client_id, _ = setup
    past = utcnow() - dt.timedelta(hours=30)
    old = queue_message(db, client_id)
    with db.write() as session:
        message = session.get(Message, old)
        assert message is not None
        message.due_at, message.expires_at = past, past + dt.timedelta(hours=24)
    fresh = queue_message(db, client_id)
    assert expire_overdue_messages(db, utcnow(), ttl=dt.timedelta(hours=24)) == 1
    assert status(db, old).status == "failed"
    assert status(db, old).error_code == "EXPIRED"
    assert status(db, fresh).status == "queued"
    (event,) = events(db, client_id)
    assert event.event_type == "sms.failed"
    assert event.payload["error"]["code"] == "EXPIRED"
    assert expire_overdue_messages(db, utcnow()) == 0


def test_the_simulated_device_is_created_once_and_takes_only_test_messages(
    setup: tuple[Database, str, str],
) -> None:
    db, client_id, device_id = setup
    live = queue_message(db, client_id)
    sandbox = queue_message(db, client_id, test=True, pinned_device_id=device_id)
    with db.write() as session:
        sim = ensure_simulated_device(session, client_id)
        assert ensure_simulated_device(session, client_id) == sim
        taken = claim_due_messages(
            session,
            client_id=client_id,
            device_id=sim,
            limit=10,
            now=utcnow(),
            test=True,
            any_pin=True,
        )
        assert [m.id for m in taken] == [sandbox]
        assert (
            claim_due_messages(
                session, client_id=client_id, device_id=device_id, limit=10, now=utcnow()
            )
            != []
        )
    assert status(db, live).device_id == device_id


def test_a_claim_round_respects_priority_pins_test_keys_and_counts_sends(
    setup: tuple[Database, str, str],
) -> None:
    from zimsend.server.devicelink.assignment import ClaimRequest, claim_round
    from zimsend.server.storage import Device

    db, client_id, first = setup
    second = accounts.create_device(db, PEPPER, client_id, "q", server_address="x:1").device.id
    low = queue_message(db, client_id, priority=3)
    pinned = queue_message(db, client_id, priority=1, pinned_device_id=second)
    high = queue_message(db, client_id, priority=2)
    sandbox = queue_message(db, client_id, test=True)
    later = utcnow() + dt.timedelta(minutes=5)
    scheduled = queue_message(db, client_id)
    with db.write() as session:
        row = session.get(Message, scheduled)
        assert row is not None
        row.due_at = row.scheduled_at = later
    requests = [ClaimRequest(client_id, first, 1), ClaimRequest(client_id, second, 1)]
    result = claim_round(db, PEPPER, requests, utcnow())
    assert [c.message_id for c in result.commands[first]] == [high]
    assert [c.message_id for c in result.commands[second]] == [pinned]
    assert not result.commands[first][0].redelivery
    assert result.commands[first][0].body == "hi"
    ((sim_client, taken),) = result.simulated.values()
    assert sim_client == client_id
    assert [m.id for m in taken] == [sandbox]
    assert result.next_due is not None
    assert abs((result.next_due - later).total_seconds()) < 1
    assert status(db, low).status == "queued"
    assert status(db, scheduled).status == "queued"
    with db.session() as session:
        counted = session.get(Device, first)
        assert counted is not None
        assert counted.sent_on_day == 1
        assert counted.last_send_at
    again = claim_round(db, PEPPER, [ClaimRequest(client_id, second, 5)], utcnow())
    assert [c.message_id for c in again.commands[second]] == [low]
    idle = claim_round(db, PEPPER, requests, utcnow())
    assert idle.commands == {}
    assert idle.simulated == {}


def test_messages_stuck_on_a_vanished_phone_time_out(setup: tuple[Database, str, str]) -> None:
    from zimsend.server.devicelink.transitions import time_out_stale_processing
    from zimsend.server.storage import Device

    db, client_id, device_id = setup
    stuck = queue_message(db, client_id)
    claim(db, client_id, device_id)
    day = dt.timedelta(hours=24)
    assert time_out_stale_processing(db, utcnow(), after=day) == 0  # handed out just now
    later = utcnow() + day + dt.timedelta(minutes=1)
    with db.write() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.online = True
    assert time_out_stale_processing(db, later, after=day) == 0  # its phone is still there
    with db.write() as session:
        device = session.get(Device, device_id)
        assert device is not None
        device.online = False
    assert time_out_stale_processing(db, later, after=day) == 1
    assert status(db, stuck).status == "failed"
    assert status(db, stuck).error_code == "TIMEOUT"
    assert [e.event_type for e in events(db, client_id)] == ["sms.failed"]
