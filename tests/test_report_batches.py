"""A batch of phone reports applied at once changes exactly what the same reports applied one
by one would (`transitions.apply_part_reports`, the device link's hot path), on both engines.

Two identical clients get the same messages and the same reports: one client's reports are
applied one transaction each, the other's in a single batch. Everything a report may touch —
messages, parts, outbox events, daily counters, the transitions returned — must come out the
same, ids aside.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from sqlmodel import col, select

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.devicelink.transitions import (
    Outcome,
    PartReport,
    apply_part_report,
    apply_part_reports,
)
from zimsend.server.storage import (
    DailyAggregate,
    Database,
    Message,
    MessagePart,
    OutboxEvent,
    claim_due_messages,
    utcnow,
)

PEPPER = b"report-batches-test-pepper-01234"

# (message index, report id, outcome, part index, part count, error code); message 0-2 have
# one part, 3-4 three parts. Replays, a repeat inside the batch, delivered before sent, a late
# report after a final status, a failed part and an unknown message are all in here.
REPORTS: list[tuple[int, str, Outcome, int, int, str]] = [
    (0, "r1", "sent", 0, 0, ""),
    (0, "r2", "delivered", 0, 0, ""),
    (0, "r2", "delivered", 0, 0, ""),  # the same report twice in one batch
    (1, "r3", "delivered", 0, 0, ""),  # delivered before sent: passes through sent
    (1, "r4", "failed", 0, 0, "network_error"),  # nothing leaves a final status
    (2, "r5", "failed", 0, 0, "weird"),  # unknown code: DEVICE_ERROR
    (3, "r6", "sent", 0, 3, ""),
    (3, "r7", "sent", 1, 3, ""),
    (3, "r8", "sent", 2, 3, ""),  # all parts sent: the message is sent
    (3, "r9", "delivered", 0, 3, ""),
    (3, "r10", "delivered", 2, 3, ""),
    (3, "r11", "delivered", 1, 3, ""),  # all delivered
    (4, "r12", "delivered", 1, 3, ""),
    (4, "r13", "failed", 0, 3, "no_credit"),  # one part failed: the message failed
    (4, "r14", "sent", 2, 3, ""),  # a part after the message failed: recorded, no change
    (-1, "r15", "sent", 0, 0, ""),  # an unknown message
    (0, "r1", "sent", 0, 0, ""),  # a replay
]


@pytest.fixture
def setup(db: Database) -> tuple[Database, list[tuple[str, str, list[str]]]]:
    now = utcnow()
    tenants = []
    for name in ("one-by-one", "batched"):
        client = accounts.create_client(db, name)
        device = accounts.create_device(db, PEPPER, client.id, "p", server_address="x:1").device
        ids = []
        with db.write() as session:
            for n in range(5):
                message = Message(
                    id=credentials.new_id("msg"),
                    client_id=client.id,
                    to="+33612345678",
                    body=f"hi {n}",
                    segments=3 if n >= 3 else 1,
                    due_at=now,
                    expires_at=now + dt.timedelta(hours=24),
                    meta={"n": n},
                    batch_id="batch_x" if n == 1 else None,
                )
                session.add(message)
                ids.append(message.id)
        with db.write() as session:
            claimed = claim_due_messages(
                session, client_id=client.id, device_id=device.id, limit=10, now=now
            )
            assert len(claimed) == 5
        tenants.append((client.id, device.id, ids))
    return db, tenants


def reports_for(ids: list[str]) -> list[PartReport]:
    return [
        PartReport(
            report_id=rid,
            message_id=ids[m] if m >= 0 else "msg_unknown",
            outcome=outcome,
            part_index=part,
            part_count=count,
            error_code=code,
            error_message="lost" if code else "",
        )
        for m, rid, outcome, part, count, code in REPORTS
    ]


def snapshot(db: Database, client_id: str, device_id: str, ids: list[str]) -> dict[str, Any]:
    name = {mid: f"m{n}" for n, mid in enumerate(ids)} | {device_id: "device"}

    def plain(row: Any, skip: tuple[str, ...] = ()) -> dict[str, Any]:
        values = row.model_dump(exclude={"client_id", *skip})
        return {k: name.get(v, v) if isinstance(v, str) else v for k, v in values.items()}

    with db.session() as session:
        messages = [
            plain(m, ("created_at", "queued_at", "due_at", "expires_at", "processing_at"))
            for m in session.exec(select(Message).where(col(Message.id).in_(ids)))
        ]
        parts = [
            plain(p)
            for p in session.exec(select(MessagePart).where(col(MessagePart.message_id).in_(ids)))
        ]
        events = []
        for e in session.exec(select(OutboxEvent).where(col(OutboxEvent.client_id) == client_id)):
            data = json.loads(json.dumps(e.payload).replace(device_id, "device"))  # error.hint
            payload = {k: name.get(v, v) if isinstance(v, str) else v for k, v in data.items()}
            events.append((e.event_type, e.status, e.attempts, e.webhook_url, payload))
        days = [
            (d.day, d.sent, d.delivered, d.failed)
            for d in session.exec(
                select(DailyAggregate).where(col(DailyAggregate.client_id) == client_id)
            )
        ]
    key = repr
    return {
        "messages": sorted(messages, key=key),
        "parts": sorted(parts, key=key),
        "events": sorted(events, key=key),
        "days": days,
    }


def test_a_batch_changes_what_the_same_reports_one_by_one_change(
    setup: tuple[Database, list[tuple[str, str, list[str]]]],
) -> None:
    db, ((c1, d1, ids1), (c2, d2, ids2)) = setup
    now = utcnow()
    one_by_one = []
    for report in reports_for(ids1):
        with db.write() as session:
            one_by_one += apply_part_report(
                session, client_id=c1, device_id=d1, report=report, now=now
            )
    with db.write() as session:
        batched = apply_part_reports(session, [(c2, d2, r) for r in reports_for(ids2)], now=now)
    rename1 = {mid: n for n, mid in enumerate(ids1)}
    rename2 = {mid: n for n, mid in enumerate(ids2)}
    assert [(rename1[t.message_id], t.old, t.new) for t in one_by_one] == [
        (rename2[t.message_id], t.old, t.new) for t in batched
    ]
    first, second = snapshot(db, c1, d1, ids1), snapshot(db, c2, d2, ids2)
    assert first == second
    statuses = sorted((m["id"], m["status"]) for m in second["messages"])
    assert statuses == [
        ("m0", "delivered"),
        ("m1", "delivered"),
        ("m2", "failed"),
        ("m3", "delivered"),
        ("m4", "failed"),
    ]
    assert second["days"][0][1:] == (3, 3, 2)
    # The whole batch again: every report is a replay and changes nothing.
    with db.write() as session:
        assert apply_part_reports(session, [(c2, d2, r) for r in reports_for(ids2)], now=now) == []
    assert snapshot(db, c2, d2, ids2) == second
