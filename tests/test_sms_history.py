"""Many messages: ListSmsHistory, GetSmsStats, ExportSmsHistory, ListInboundSms (SPEC.md §4),
over gRPC against a real server.

This module's server keeps ten years of history (`ZIMSEND_RETENTION_DAYS=3650`) so that the
FAQ's January 2025 example has messages to find; messages are inserted with the dates a test
needs. Each test uses its own client, so counts are exact.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import grpc
import pytest
from _sms import Account, fails, insert_message, new_account, new_device
from conftest import TEST_PEPPER

from zimsend.server.accounts import credentials
from zimsend.server.storage import (
    NO_DEVICE,
    DailyAggregate,
    Database,
    InboundMessage,
    Message,
    utcnow,
)
from zimsend.v1 import common_pb2
from zimsend.v1 import sms_pb2 as pb
from zimsend.v1.sms_pb2_grpc import SmsServiceStub

PEPPER = TEST_PEPPER.encode()
UTC = dt.UTC


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    return make_env(
        tmp_path_factory.mktemp("zimsend-data"), TEST_PEPPER, ZIMSEND_RETENTION_DAYS="3650"
    )


@pytest.fixture
def account(server_db: Database) -> Account:
    return new_account(server_db, PEPPER, "history")


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def listing(sms: SmsServiceStub, account: Account, **filters: Any) -> pb.ListSmsHistoryResponse:
    return sms.ListSmsHistory(
        pb.ListSmsHistoryRequest(**filters), metadata=account.md(), timeout=10
    )


# --- History ---------------------------------------------------------------------------------


def test_the_faq_export_example_works_verbatim(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    """`/v1/sms/history?from_date=2025-01-01&to_date=2025-01-31&limit=100`"""
    times = [
        "2024-12-31T23:59:59.999999Z",
        "2025-01-01T00:00:00Z",
        "2025-01-15T10:30:00Z",
        "2025-01-31T23:59:59.999Z",
        "2025-02-01T00:00:00Z",
    ]
    ids = {
        t: insert_message(server_db, account.client_id, created_at=at(t), status="delivered")
        for t in times
    }
    reply = listing(sms, account, from_date="2025-01-01", to_date="2025-01-31", limit=100)
    assert reply.success
    assert [m.message_id for m in reply.data] == [ids[t] for t in reversed(times[1:4])]
    assert reply.pagination == common_pb2.Pagination(
        current_page=1, per_page=100, total_pages=1, total_items=3
    )
    # RFC 3339 bounds are exact instants.
    exact = listing(
        sms, account, from_date="2025-01-15T10:30:00Z", to_date="2025-01-31T23:59:59.999Z"
    )
    assert [m.message_id for m in exact.data] == [ids[times[3]], ids[times[2]]]


def test_pages(sms: SmsServiceStub, account: Account, server_db: Database) -> None:
    start = utcnow() - dt.timedelta(hours=1)
    ids = [
        insert_message(server_db, account.client_id, created_at=start + dt.timedelta(seconds=i))
        for i in range(7)
    ]
    newest_first = list(reversed(ids))
    default = listing(sms, account)
    assert (default.pagination.current_page, default.pagination.per_page) == (1, 50)
    assert [m.message_id for m in default.data] == newest_first
    pages = [listing(sms, account, page=p, limit=3) for p in (1, 2, 3, 4)]
    assert [[m.message_id for m in r.data] for r in pages] == [
        newest_first[:3],
        newest_first[3:6],
        newest_first[6:],
        [],
    ]
    assert {(r.pagination.total_pages, r.pagination.total_items) for r in pages} == {(3, 7)}
    assert listing(sms, account, limit=100).pagination.per_page == 100


def test_filters(sms: SmsServiceStub, account: Account, server_db: Database) -> None:
    phone = new_device(server_db, PEPPER, account.client_id)
    a = insert_message(
        server_db,
        account.client_id,
        to="+33612345678",
        status="delivered",
        device_id=phone,
        body="Votre RDV est confirmé",
    )
    b = insert_message(
        server_db,
        account.client_id,
        to="+447911123456",
        status="failed",
        device_id=phone,
        body="Promo 100% gratuit_ok",
    )
    c = insert_message(
        server_db, account.client_id, to="+33612345678", status="queued", body="Promo 100 pour cent"
    )

    def ids(**filters: Any) -> set[str]:
        return {m.message_id for m in listing(sms, account, **filters).data}

    assert ids(status=common_pb2.delivered) == {a}
    assert ids(status=common_pb2.queued) == {c}
    assert ids(to="+33 6 12 34 56 78") == {a, c}  # normalised to E.164 like the stored number
    assert ids(device_id=phone) == {a, b}
    assert ids(search="rdv") == {a}  # case-insensitive
    assert ids(search="100%") == {b}  # % is a literal, not a wildcard
    assert ids(search="_ok") == {b}
    assert ids(search="promo", status=common_pb2.queued) == {c}
    assert ids(search="nothing like this") == set()


def test_history_entries_are_complete(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    phone = new_device(server_db, PEPPER, account.client_id)
    sent_at = utcnow() - dt.timedelta(minutes=1)
    message_id = insert_message(
        server_db,
        account.client_id,
        status="delivered",
        device_id=phone,
        segments=2,
        encoding="UCS-2",
        priority=1,
        sent_at=sent_at,
        delivered_at=utcnow(),
        meta={"k": 1},
        batch_id="batch_0123456789abcdef",
    )
    (entry,) = listing(sms, account).data
    assert (entry.message_id, entry.status, entry.device_id) == (
        message_id,
        common_pb2.delivered,
        phone,
    )
    assert (entry.segments, entry.encoding, entry.priority) == (
        2,
        common_pb2.UCS2,
        common_pb2.urgent,
    )
    assert entry.HasField("sent_at")
    assert entry.HasField("delivered_at")
    assert entry.batch_id == "batch_0123456789abcdef"
    assert entry.attempts == 1
    assert dict(entry.metadata) == {"k": 1.0}


def test_history_is_scoped_to_the_client_and_retention(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    other = new_account(server_db, PEPPER, "other")
    insert_message(server_db, other.client_id)
    insert_message(server_db, account.client_id, created_at=utcnow() - dt.timedelta(days=3651))
    mine = insert_message(server_db, account.client_id)
    assert [m.message_id for m in listing(sms, account).data] == [mine]
    assert listing(sms, account, from_date="2000-01-01").pagination.total_items == 1


# --- Stats -----------------------------------------------------------------------------------


def test_stats_count_by_day(sms: SmsServiceStub, account: Account, server_db: Database) -> None:
    phone = new_device(server_db, PEPPER, account.client_id)
    day_a, day_b = "2025-01-10T08:00:00Z", "2025-01-11T20:00:00Z"
    for status, when, device in [
        ("delivered", day_a, phone),
        ("delivered", day_a, phone),
        ("sent", day_a, None),
        ("failed", day_a, phone),
        ("delivered", day_b, None),
        ("queued", day_b, None),
        ("processing", day_b, phone),
        ("cancelled", day_b, None),
        ("delivered", "2025-02-01T00:00:00Z", None),  # outside the period
    ]:
        insert_message(
            server_db, account.client_id, status=status, created_at=at(when), device_id=device
        )
    # An aggregate for a day still inside retention is ignored: messages are the truth there.
    with server_db.write() as session:
        session.add(
            DailyAggregate(
                client_id=account.client_id, day=dt.date(2025, 1, 10), sent=100, delivered=100
            )
        )
    reply = sms.GetSmsStats(
        pb.GetSmsStatsRequest(from_date="2025-01-01", to_date="2025-01-31"),
        metadata=account.md(),
        timeout=10,
    )
    assert reply.success
    assert getattr(reply.period, "from").ToDatetime(UTC) == at("2025-01-01T00:00:00Z")
    assert reply.period.to.ToDatetime(UTC) == at("2025-01-31T23:59:59.999999Z")
    stats = reply.stats
    assert (stats.total_sent, stats.delivered, stats.failed, stats.pending) == (4, 3, 1, 2)
    assert stats.delivery_rate == 75.0
    assert [(d.date, d.sent, d.delivered, d.failed) for d in stats.by_day] == [
        ("2025-01-10", 3, 2, 1),
        ("2025-01-11", 1, 1, 0),
    ]
    by_device = sms.GetSmsStats(
        pb.GetSmsStatsRequest(from_date="2025-01-01", to_date="2025-01-31", device_id=phone),
        metadata=account.md(),
        timeout=10,
    ).stats
    assert (by_device.total_sent, by_device.delivered, by_device.failed, by_device.pending) == (
        2,
        2,
        1,
        1,
    )


def test_delivery_rate_is_rounded_to_two_decimals(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    for status in ("delivered", "delivered", "sent"):
        insert_message(server_db, account.client_id, status=status)
    stats = sms.GetSmsStats(pb.GetSmsStatsRequest(), metadata=account.md(), timeout=10).stats
    assert stats.delivery_rate == 66.67


def test_stats_default_to_the_last_30_days(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    now = utcnow()
    insert_message(
        server_db, account.client_id, status="delivered", created_at=now - dt.timedelta(days=10)
    )
    insert_message(
        server_db, account.client_id, status="delivered", created_at=now - dt.timedelta(days=40)
    )
    reply = sms.GetSmsStats(pb.GetSmsStatsRequest(), metadata=account.md(), timeout=10)
    assert (reply.stats.total_sent, reply.stats.delivered) == (1, 1)
    start = getattr(reply.period, "from").ToDatetime(UTC)
    end = reply.period.to.ToDatetime(UTC)
    assert end - start == dt.timedelta(days=30)
    assert abs((end - now).total_seconds()) < 60
    empty = sms.GetSmsStats(
        pb.GetSmsStatsRequest(from_date="2024-01-01", to_date="2024-01-31"),
        metadata=account.md(),
        timeout=10,
    ).stats
    assert (empty.total_sent, empty.delivery_rate, len(empty.by_day)) == (0, 0.0, 0)


def test_stats_answer_for_days_past_retention_from_aggregates(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    """SPEC §4: after 90 days (here ten years) only per-day counts remain, and stats keep
    answering for those days."""
    phone = new_device(server_db, PEPPER, account.client_id)
    with server_db.write() as session:
        session.add_all(
            [
                DailyAggregate(
                    client_id=account.client_id,
                    device_id=phone,
                    day=dt.date(2015, 3, 1),
                    sent=5,
                    delivered=4,
                    failed=1,
                ),
                DailyAggregate(
                    client_id=account.client_id,
                    device_id=NO_DEVICE,
                    day=dt.date(2015, 3, 1),
                    failed=2,
                ),
                DailyAggregate(
                    client_id=account.client_id,
                    device_id=phone,
                    day=dt.date(2015, 3, 2),
                    sent=1,
                    delivered=1,
                ),
            ]
        )
    # A message row the worker has not purged yet must not count twice.
    insert_message(
        server_db, account.client_id, status="delivered", created_at=at("2015-03-01T12:00:00Z")
    )
    stats = sms.GetSmsStats(
        pb.GetSmsStatsRequest(from_date="2015-03-01", to_date="2015-03-31"),
        metadata=account.md(),
        timeout=10,
    ).stats
    assert (stats.total_sent, stats.delivered, stats.failed) == (6, 5, 3)
    assert [(d.date, d.sent, d.delivered, d.failed) for d in stats.by_day] == [
        ("2015-03-01", 5, 4, 3),
        ("2015-03-02", 1, 1, 0),
    ]
    only_phone = sms.GetSmsStats(
        pb.GetSmsStatsRequest(from_date="2015-03-01", to_date="2015-03-01", device_id=phone),
        metadata=account.md(),
        timeout=10,
    ).stats
    assert (only_phone.total_sent, only_phone.failed) == (5, 1)


def test_stats_span_aggregates_and_messages(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    with server_db.write() as session:
        session.add(
            DailyAggregate(
                client_id=account.client_id, day=dt.date(2015, 6, 1), sent=2, delivered=2
            )
        )
    insert_message(
        server_db, account.client_id, status="failed", created_at=at("2025-06-01T00:00:00Z")
    )
    stats = sms.GetSmsStats(
        pb.GetSmsStatsRequest(from_date="2015-01-01"), metadata=account.md(), timeout=10
    ).stats
    assert [(d.date, d.sent, d.failed) for d in stats.by_day] == [
        ("2015-06-01", 2, 0),
        ("2025-06-01", 0, 1),
    ]


# --- Export ----------------------------------------------------------------------------------


def export(sms: SmsServiceStub, account: Account, **fields: Any) -> tuple[str, str, int]:
    chunks = list(
        sms.ExportSmsHistory(
            pb.ExportSmsHistoryRequest(**fields), metadata=account.md(), timeout=30
        )
    )
    assert len({c.content_type for c in chunks}) == 1
    return chunks[0].content_type, b"".join(c.data for c in chunks).decode(), len(chunks)


def insert_many(server_db: Database, client_id: str, count: int, start: dt.datetime) -> list[str]:
    rows = [
        Message(
            id=credentials.new_id("msg"),
            client_id=client_id,
            to="+33612345678",
            body=f'n°{i}, "quoted"\nline',
            status="delivered" if i % 2 else "failed",
            created_at=start + dt.timedelta(seconds=i // 3),  # ties: keyset must use the id
            queued_at=start,
            due_at=start,
        )
        for i in range(count)
    ]
    with server_db.write() as session:
        session.add_all(rows)
    return [r.id for r in sorted(rows, key=lambda r: (r.created_at, r.id))]


def test_export_csv_streams_every_message_in_chunks(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    ids = insert_many(server_db, account.client_id, 1201, at("2025-03-01T00:00:00Z"))
    content_type, text, chunks = export(sms, account, from_date="2025-03-01", to_date="2025-03-31")
    assert content_type.startswith("text/csv")
    assert chunks == 3  # 500 + 500 + 201
    lines = text.split("\r\n")
    assert lines[-2] == "# end of export: 1201 messages"
    assert lines[-1] == ""
    records = list(csv.DictReader(io.StringIO(text.rsplit("# end of export", 1)[0])))
    assert [r["message_id"] for r in records] == ids  # oldest first, none lost or repeated
    first = next(r for r in records if r["message"].startswith("n°0,"))
    assert first["message"] == 'n°0, "quoted"\nline'
    assert first["status"] == "failed"
    assert first["to"] == "+33612345678"
    assert first["priority"] == "normal"
    assert first["created_at"] == "2025-03-01T00:00:00Z"
    assert first["attempts"] == "1"


def test_export_jsonl_with_filters(
    sms: SmsServiceStub, account: Account, server_db: Database
) -> None:
    insert_many(server_db, account.client_id, 10, at("2025-04-01T00:00:00Z"))
    content_type, text, _ = export(sms, account, format="jsonl", status=common_pb2.delivered)
    assert content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in text.splitlines()]
    assert lines[-1] == {"end_of_export": True, "total": 5}
    assert {e["status"] for e in lines[:-1]} == {"delivered"}
    assert len(lines) == 6
    assert lines[0]["to"] == "+33612345678"
    assert lines[0]["encoding"] == "GSM7"


def test_export_of_nothing(sms: SmsServiceStub, account: Account) -> None:
    _, text, chunks = export(sms, account, format="csv")
    assert chunks == 1
    assert text.startswith("message_id,status,to,message,")
    assert text.endswith("# end of export: 0 messages\r\n")


# --- Inbox -----------------------------------------------------------------------------------


def test_inbox(sms: SmsServiceStub, account: Account, server_db: Database) -> None:
    first_phone = new_device(server_db, PEPPER, account.client_id)
    second_phone = new_device(server_db, PEPPER, account.client_id)
    other = new_account(server_db, PEPPER, "other")
    other_phone = new_device(server_db, PEPPER, other.client_id)
    rows = []
    for i, (client, device, when) in enumerate(
        [
            (account.client_id, first_phone, "2025-05-01T10:00:00Z"),
            (account.client_id, second_phone, "2025-05-02T10:00:00Z"),
            (account.client_id, first_phone, "2025-05-03T10:00:00Z"),
            (other.client_id, other_phone, "2025-05-02T11:00:00Z"),
        ]
    ):
        rows.append(
            InboundMessage(
                id=credentials.new_id("in"),
                client_id=client,
                device_id=device,
                report_id=f"r{i}",
                from_number="+33612345678",
                body=f"STOP {i}",
                sim_slot=i % 2,
                received_at=at(when),
            )
        )
    with server_db.write() as session:
        session.add_all(rows)
    ids = [r.id for r in rows]

    def inbox(**fields: Any) -> pb.ListInboundSmsResponse:
        return sms.ListInboundSms(
            pb.ListInboundSmsRequest(**fields), metadata=account.md(), timeout=10
        )

    everything = inbox()
    assert [m.id for m in everything.data] == [ids[2], ids[1], ids[0]]  # newest first
    newest = everything.data[0]
    assert (getattr(newest, "from"), newest.message, newest.device_id, newest.sim_slot) == (
        "+33612345678",
        "STOP 2",
        first_phone,
        0,
    )
    assert newest.received_at.ToDatetime(UTC) == at("2025-05-03T10:00:00Z")
    assert [m.id for m in inbox(device_id=first_phone).data] == [ids[2], ids[0]]
    assert [m.id for m in inbox(from_date="2025-05-02", to_date="2025-05-02").data] == [ids[1]]
    paged = inbox(page=2, limit=2)
    assert [m.id for m in paged.data] == [ids[0]]
    assert (paged.pagination.total_pages, paged.pagination.total_items) == (2, 3)


def test_lists_need_credentials(sms: SmsServiceStub) -> None:
    error = fails(sms.ListSmsHistory, pb.ListSmsHistoryRequest(), ())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
