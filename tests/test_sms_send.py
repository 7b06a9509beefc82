"""Sending: SendSms, SendBulkSms, SendBulkPersonalizedSms over gRPC against a real server
(SPEC.md §3 and §5; issue 5 items 1-3 and 6).

Phones are not connected here: a device is "online" because its presence columns say so (as
the replica holding its stream writes them), so the messages these tests queue stay `queued`
unless a test key sends them (then the built-in simulated device may take them).
"""

from __future__ import annotations

import datetime as dt
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from _sms import (
    Account,
    error_reason,
    fails,
    get_message,
    later,
    message_of,
    new_account,
    new_device,
    set_online,
    unique_text,
)
from conftest import TEST_PEPPER
from google.protobuf import json_format, struct_pb2
from sqlmodel import col

from zimsend.server.storage import Database, Device, utcnow
from zimsend.v1 import common_pb2
from zimsend.v1 import sms_pb2 as pb
from zimsend.v1.sms_pb2_grpc import SmsServiceStub

PEPPER = TEST_PEPPER.encode()
TO = "+33612345678"


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


@pytest.fixture(scope="module")
def online(server_db: Database, sms_account: Account) -> str:
    """An online phone for `sms_account`, so its immediate live sends are accepted."""
    return new_device(server_db, PEPPER, sms_account.client_id, online=True)


@pytest.fixture
def lonely(server_db: Database) -> Account:
    """A fresh client with no device at all."""
    return new_account(server_db, PEPPER, "lonely")


def history(
    sms: SmsServiceStub, account: Account, text: str, test: bool = False
) -> pb.ListSmsHistoryResponse:
    return sms.ListSmsHistory(
        pb.ListSmsHistoryRequest(search=text, limit=100), metadata=account.md(test=test), timeout=10
    )


# --- One SMS ---------------------------------------------------------------------------------


def test_send_returns_the_documented_response(
    sms: SmsServiceStub, sms_account: Account, online: str, server_db: Database
) -> None:
    set_online(server_db, online)
    before = utcnow()
    reply = sms.SendSms(
        pb.SendSmsRequest(to="+33 6 12 34 56 78", message="Bonjour"),
        metadata=sms_account.md(),
        timeout=10,
    )
    assert reply.success is True
    assert reply.message_id.startswith("msg_")
    assert len(reply.message_id) == 20
    assert reply.status == common_pb2.queued
    assert reply.to == TO  # E.164 out
    assert reply.queued_at.ToDatetime(dt.UTC) >= before.replace(microsecond=0)
    assert reply.estimated_delivery.ToDatetime(dt.UTC) >= reply.queued_at.ToDatetime(dt.UTC)
    assert (reply.segments, reply.encoding) == (1, common_pb2.GSM7)
    assert reply.priority == common_pb2.normal  # PRIORITY_UNSPECIFIED means normal
    assert not reply.HasField("scheduled_at")
    row = get_message(server_db, reply.message_id)
    assert (row.status, row.to, row.body, row.priority, row.test) == (
        "queued",
        TO,
        "Bonjour",
        3,
        False,
    )
    assert row.pinned_device_id is None
    assert row.expires_at == row.due_at + dt.timedelta(hours=24)


def test_1600_gsm_characters_are_11_segments(sms: SmsServiceStub, sms_account: Account) -> None:
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="a" * 1600), metadata=sms_account.md(test=True), timeout=10
    )
    assert (reply.segments, reply.encoding) == (11, common_pb2.GSM7)


@pytest.mark.parametrize(
    ("text", "segments", "encoding"),
    [
        ("a" * 160, 1, common_pb2.GSM7),
        ("a" * 161, 2, common_pb2.GSM7),
        ("€" * 80, 1, common_pb2.GSM7),
        ("€" * 81, 2, common_pb2.GSM7),
        ("Rendez-vous demain 😀", 1, common_pb2.UCS2),
        ("é" * 160, 1, common_pb2.GSM7),
        ("ł" * 70, 1, common_pb2.UCS2),
        ("ł" * 71, 2, common_pb2.UCS2),
        ("a" * 152 + "€" + "a" * 152, 3, common_pb2.GSM7),
    ],
)
def test_segments_and_encoding(
    sms: SmsServiceStub, sms_account: Account, text: str, segments: int, encoding: int
) -> None:
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message=text), metadata=sms_account.md(test=True), timeout=10
    )
    assert (reply.segments, reply.encoding) == (segments, encoding)


@pytest.mark.parametrize(
    ("given", "applied"),
    [
        (common_pb2.urgent, 1),
        (common_pb2.high, 2),
        (3, 3),
        (common_pb2.low, 4),
        (5, 5),
    ],
)
def test_priority_integer_or_name(
    sms: SmsServiceStub,
    sms_account: Account,
    server_db: Database,
    given: common_pb2.Priority.ValueType,
    applied: int,
) -> None:
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="p", priority=given),
        metadata=sms_account.md(test=True),
        timeout=10,
    )
    assert reply.priority == applied
    assert (
        common_pb2.Priority.Name(reply.priority)
        == ["urgent", "high", "normal", "low", "very_low"][applied - 1]
    )
    assert get_message(server_db, reply.message_id).priority == applied


def test_metadata_webhook_and_sim_slot_are_kept(
    sms: SmsServiceStub, sms_account: Account, server_db: Database
) -> None:
    meta = {"order": 1234, "tags": ["a", "b"], "nested": {"ok": True, "ratio": 0.5}}
    reply = sms.SendSms(
        pb.SendSmsRequest(
            to=TO,
            message="m",
            metadata=struct(meta),
            webhook_url="https://example.com/hook",
            sim_slot=1,
        ),
        metadata=sms_account.md(test=True),
        timeout=10,
    )
    row = get_message(server_db, reply.message_id)
    assert row.meta == meta  # integers stay integers
    assert (row.webhook_url, row.sim_slot) == ("https://example.com/hook", 1)
    status = sms.GetSmsStatus(
        pb.GetSmsStatusRequest(message_id=reply.message_id),
        metadata=sms_account.md(test=True),
        timeout=10,
    )
    assert json_format.MessageToDict(status.metadata) == {
        "order": 1234,
        "tags": ["a", "b"],
        "nested": {"ok": True, "ratio": 0.5},
    }


# --- Scheduling, devices, test keys ----------------------------------------------------------


def test_immediate_send_without_any_device(sms: SmsServiceStub, lonely: Account) -> None:
    error = fails(sms.SendSms, pb.SendSmsRequest(to=TO, message="now"), lonely.md())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "NO_DEVICE_AVAILABLE"
    assert "scheduled_at" in message_of(error)  # says what to do


def test_immediate_send_with_only_offline_devices(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    device = new_device(server_db, PEPPER, lonely.client_id)
    stale = utcnow() - dt.timedelta(minutes=10)  # online flag set, heartbeats stopped
    set_online(server_db, device)
    with server_db.write() as session:
        row = session.get(Device, device)
        assert row is not None
        row.last_seen_at = stale
    error = fails(sms.SendSms, pb.SendSmsRequest(to=TO, message="now"), lonely.md())
    assert error_reason(error) == "NO_DEVICE_AVAILABLE"


def test_scheduled_send_is_accepted_with_no_device_online(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    when = later(hours=2)
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="later", scheduled_at=when),
        metadata=lonely.md(),
        timeout=10,
    )
    assert reply.status == common_pb2.queued
    scheduled = reply.scheduled_at.ToDatetime(dt.UTC)
    assert abs((scheduled - dt.datetime.fromisoformat(when)).total_seconds()) < 0.001
    assert reply.estimated_delivery.ToDatetime(dt.UTC) >= scheduled
    row = get_message(server_db, reply.message_id)
    assert row.due_at == row.scheduled_at == scheduled
    assert row.expires_at == scheduled + dt.timedelta(hours=24)


def test_immediate_send_with_a_test_key_needs_no_device(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="sandbox"), metadata=lonely.md(test=True), timeout=10
    )
    assert reply.success
    assert get_message(server_db, reply.message_id).test is True


def test_unknown_device_id(sms: SmsServiceStub, sms_account: Account) -> None:
    error = fails(
        sms.SendSms,
        pb.SendSmsRequest(to=TO, message="x"),
        sms_account.md(device="device_0000000000000000"),
    )
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "INVALID_DEVICE_ID"
    assert "X-Device-ID" in message_of(error)


def test_another_clients_device_is_unknown(
    sms: SmsServiceStub, sms_account: Account, lonely: Account, server_db: Database
) -> None:
    theirs = new_device(server_db, PEPPER, lonely.client_id, online=True)
    for scheduled in ("", later(hours=1)):
        error = fails(
            sms.SendSms,
            pb.SendSmsRequest(to=TO, message="x", scheduled_at=scheduled),
            sms_account.md(device=theirs),
        )
        assert error_reason(error) == "INVALID_DEVICE_ID"


def test_deleted_device_is_unknown(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    device = new_device(server_db, PEPPER, lonely.client_id, online=True)
    with server_db.write() as session:
        row = session.get(Device, device)
        assert row is not None
        row.deleted_at = utcnow()
    error = fails(sms.SendSms, pb.SendSmsRequest(to=TO, message="x"), lonely.md(device=device))
    assert error_reason(error) == "INVALID_DEVICE_ID"


def test_pinned_offline_device(sms: SmsServiceStub, lonely: Account, server_db: Database) -> None:
    device = new_device(server_db, PEPPER, lonely.client_id)
    new_device(server_db, PEPPER, lonely.client_id, online=True)  # another phone is online
    error = fails(sms.SendSms, pb.SendSmsRequest(to=TO, message="x"), lonely.md(device=device))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "DEVICE_OFFLINE"
    assert device in message_of(error)
    # Scheduled: accepted, and waits for that very phone.
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="x", scheduled_at=later(minutes=5)),
        metadata=lonely.md(device=device),
        timeout=10,
    )
    assert get_message(server_db, reply.message_id).pinned_device_id == device


def test_pinned_disabled_device_is_offline(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    device = new_device(server_db, PEPPER, lonely.client_id, online=True)
    with server_db.write() as session:
        row = session.get(Device, device)
        assert row is not None
        row.enabled = False
    error = fails(sms.SendSms, pb.SendSmsRequest(to=TO, message="x"), lonely.md(device=device))
    assert error_reason(error) == "DEVICE_OFFLINE"
    assert "disabled" in message_of(error)


def test_pinned_online_device(
    sms: SmsServiceStub, sms_account: Account, online: str, server_db: Database
) -> None:
    set_online(server_db, online)
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="pinned"),
        metadata=sms_account.md(device=online),
        timeout=10,
    )
    assert get_message(server_db, reply.message_id).pinned_device_id == online


def test_estimated_delivery_follows_the_queue_and_the_phones(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    phone = new_device(server_db, PEPPER, lonely.client_id, online=True)

    def wait_of(reply: pb.SendSmsResponse) -> float:
        return (
            reply.estimated_delivery.ToDatetime() - reply.queued_at.ToDatetime()
        ).total_seconds()

    first = sms.SendSms(pb.SendSmsRequest(to=TO, message="1"), metadata=lonely.md(), timeout=10)
    assert wait_of(first) == 0
    sms.SendSms(pb.SendSmsRequest(to=TO, message="2"), metadata=lonely.md(), timeout=10)
    third = sms.SendSms(pb.SendSmsRequest(to=TO, message="3"), metadata=lonely.md(), timeout=10)
    assert wait_of(third) == pytest.approx(5.0)  # two ahead x 2.5 s
    urgent = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="u", priority=common_pb2.urgent),
        metadata=lonely.md(),
        timeout=10,
    )
    assert wait_of(urgent) == 0  # nothing urgent ahead of it
    new_device(server_db, PEPPER, lonely.client_id, online=True)
    set_online(server_db, phone)
    fifth = sms.SendSms(pb.SendSmsRequest(to=TO, message="5"), metadata=lonely.md(), timeout=10)
    assert wait_of(fifth) == pytest.approx(4 * 2.5 / 2)  # two phones share the queue


# --- Bulk -------------------------------------------------------------------------------------


def test_bulk_queues_every_recipient(
    sms: SmsServiceStub, sms_account: Account, server_db: Database
) -> None:
    text = unique_text("bulk")
    recipients = ["+33612345678", "+44 7911 123456", "+263771234567"]
    reply = sms.SendBulkSms(
        pb.SendBulkSmsRequest(
            recipients=recipients,
            message=text,
            priority=common_pb2.high,
            scheduled_at=later(hours=1),
            metadata=struct({"campaign": "x"}),
        ),
        metadata=sms_account.md(),
        timeout=10,
    )
    assert reply.success
    assert reply.batch_id.startswith("batch_")
    assert reply.total_recipients == 3
    assert [m.to for m in reply.messages] == ["+33612345678", "+447911123456", "+263771234567"]
    assert all(m.status == common_pb2.queued for m in reply.messages)
    assert len({m.message_id for m in reply.messages}) == 3
    rows = [get_message(server_db, m.message_id) for m in reply.messages]
    assert {(r.batch_id, r.priority, r.body) for r in rows} == {(reply.batch_id, 2, text)}
    assert all(r.meta == {"campaign": "x"} for r in rows)
    assert history(sms, sms_account, text).pagination.total_items == 3


def test_one_bad_number_in_100_queues_nothing(sms: SmsServiceStub, sms_account: Account) -> None:
    text = unique_text("atomic")
    recipients = [f"+336123456{i:02d}" for i in range(100)]
    recipients[57] = "+33 12"
    error = fails(
        sms.SendBulkSms,
        pb.SendBulkSmsRequest(recipients=recipients, message=text),
        sms_account.md(test=True),
    )
    assert error_reason(error) == "INVALID_PHONE_NUMBER"
    assert "recipients[57]" in message_of(error)
    assert history(sms, sms_account, text, test=True).pagination.total_items == 0
    recipients[57] = "+33612345699"
    reply = sms.SendBulkSms(
        pb.SendBulkSmsRequest(recipients=recipients, message=text),
        metadata=sms_account.md(test=True),
        timeout=10,
    )
    assert reply.total_recipients == 100
    assert history(sms, sms_account, text, test=True).pagination.total_items == 100


def test_101_recipients_queue_nothing(sms: SmsServiceStub, sms_account: Account) -> None:
    text = unique_text("many")
    error = fails(
        sms.SendBulkSms,
        pb.SendBulkSmsRequest(recipients=[TO] * 101, message=text),
        sms_account.md(test=True),
    )
    assert error_reason(error) == "TOO_MANY_RECIPIENTS"
    assert history(sms, sms_account, text, test=True).pagination.total_items == 0


def test_bulk_needs_a_device_like_a_single_send(sms: SmsServiceStub, lonely: Account) -> None:
    error = fails(sms.SendBulkSms, pb.SendBulkSmsRequest(recipients=[TO], message="x"), lonely.md())
    assert error_reason(error) == "NO_DEVICE_AVAILABLE"


def test_personalized_bulk(sms: SmsServiceStub, sms_account: Account, server_db: Database) -> None:
    tag = unique_text("perso")
    request = pb.SendBulkPersonalizedSmsRequest(
        messages=[
            pb.PersonalizedMessage(
                to="+33612345678",
                message=f"{tag} Bonjour Alice",
                metadata=struct({"name": "Alice"}),
            ),
            pb.PersonalizedMessage(to="+447911123456", message=f"{tag} Hello Bob 😀"),
        ],
        priority=common_pb2.low,
        scheduled_at=later(hours=3),
    )
    reply = sms.SendBulkPersonalizedSms(request, metadata=sms_account.md(), timeout=10)
    assert reply.success
    assert reply.batch_id.startswith("batch_")
    assert reply.total_recipients == 2
    first, second = (get_message(server_db, m.message_id) for m in reply.messages)
    assert (first.body, first.meta, first.encoding) == (
        f"{tag} Bonjour Alice",
        {"name": "Alice"},
        "GSM-7",
    )
    assert (second.to, second.meta, second.encoding) == ("+447911123456", None, "UCS-2")
    assert first.batch_id == second.batch_id == reply.batch_id
    assert first.priority == second.priority == 4


def test_personalized_bulk_is_atomic(sms: SmsServiceStub, sms_account: Account) -> None:
    tag = unique_text("perso-atomic")
    request = pb.SendBulkPersonalizedSmsRequest(
        messages=[
            pb.PersonalizedMessage(to=TO, message=f"{tag} ok"),
            pb.PersonalizedMessage(to=TO, message=f"{tag} " + "x" * 1600),
        ]
    )
    error = fails(sms.SendBulkPersonalizedSms, request, sms_account.md(test=True))
    assert error_reason(error) == "MESSAGE_TOO_LONG"
    assert "messages[1].message" in message_of(error)
    assert history(sms, sms_account, tag, test=True).pagination.total_items == 0


# --- Idempotency -------------------------------------------------------------------------


def test_same_key_twice_sends_once(sms: SmsServiceStub, sms_account: Account) -> None:
    text = unique_text("idem")
    request = pb.SendSmsRequest(to=TO, message=text, scheduled_at=later(hours=1))
    md = sms_account.md(idempotency_key=unique_text("key"))
    first = sms.SendSms(request, metadata=md, timeout=10)
    second = sms.SendSms(request, metadata=md, timeout=10)
    assert second == first  # the original response, byte for byte
    assert history(sms, sms_account, text).pagination.total_items == 1


def test_key_in_the_field_works_like_the_header(sms: SmsServiceStub, sms_account: Account) -> None:
    text = unique_text("idem-field")
    key = unique_text("key")
    request = pb.SendSmsRequest(to=TO, message=text, idempotency_key=key)
    first = sms.SendSms(request, metadata=sms_account.md(test=True), timeout=10)
    # The same key as a header, with the field left out: the same request.
    again = sms.SendSms(
        pb.SendSmsRequest(to=TO, message=text),
        metadata=sms_account.md(test=True, idempotency_key=key),
        timeout=10,
    )
    assert again.message_id == first.message_id
    assert history(sms, sms_account, text, test=True).pagination.total_items == 1


def test_replay_does_not_recheck_what_changed_since(
    sms: SmsServiceStub, lonely: Account, server_db: Database
) -> None:
    """A retry after a timeout must not fail because the phone went offline meanwhile."""
    device = new_device(server_db, PEPPER, lonely.client_id, online=True)
    md = lonely.md(idempotency_key=unique_text("key"))
    first = sms.SendSms(pb.SendSmsRequest(to=TO, message="x"), metadata=md, timeout=10)
    set_online(server_db, device, online=False)
    assert sms.SendSms(pb.SendSmsRequest(to=TO, message="x"), metadata=md, timeout=10) == first


def test_same_key_different_body_is_refused(sms: SmsServiceStub, sms_account: Account) -> None:
    text = unique_text("idem-diff")
    md = sms_account.md(test=True, idempotency_key=unique_text("key"))
    sms.SendSms(pb.SendSmsRequest(to=TO, message=text), metadata=md, timeout=10)
    for other in (
        pb.SendSmsRequest(to=TO, message=text + "!"),
        pb.SendSmsRequest(to=TO, message=text, priority=common_pb2.high),
    ):
        error = fails(sms.SendSms, other, md)
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS  # HTTP 409
        assert error_reason(error) == "IDEMPOTENCY_KEY_REUSED"
        assert "different request" in message_of(error)
    # Another endpoint with the same key is a different request too.
    bulk = pb.SendBulkSmsRequest(recipients=[TO], message=text)
    assert error_reason(fails(sms.SendBulkSms, bulk, md)) == "IDEMPOTENCY_KEY_REUSED"
    assert history(sms, sms_account, text, test=True).pagination.total_items == 1


def test_keys_belong_to_their_client(
    sms: SmsServiceStub, sms_account: Account, lonely: Account
) -> None:
    key = unique_text("key")
    mine = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="a"),
        metadata=sms_account.md(test=True, idempotency_key=key),
        timeout=10,
    )
    theirs = sms.SendSms(
        pb.SendSmsRequest(to=TO, message="b"),
        metadata=lonely.md(test=True, idempotency_key=key),
        timeout=10,
    )
    assert theirs.message_id != mine.message_id


def test_bulk_replay(sms: SmsServiceStub, sms_account: Account) -> None:
    text = unique_text("idem-bulk")
    request = pb.SendBulkSmsRequest(
        recipients=[TO, "+447911123456"], message=text, idempotency_key=unique_text("key")
    )
    first = sms.SendBulkSms(request, metadata=sms_account.md(test=True), timeout=10)
    assert sms.SendBulkSms(request, metadata=sms_account.md(test=True), timeout=10) == first
    assert history(sms, sms_account, text, test=True).pagination.total_items == 2


def test_expired_record_is_reused(
    sms: SmsServiceStub, sms_account: Account, server_db: Database
) -> None:
    from sqlalchemy import update

    from zimsend.server.storage import IdempotencyRecord

    key = unique_text("key")
    md = sms_account.md(test=True, idempotency_key=key)
    first = sms.SendSms(pb.SendSmsRequest(to=TO, message="old"), metadata=md, timeout=10)
    with server_db.write() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(col(IdempotencyRecord.key) == key)
            .values(created_at=utcnow() - dt.timedelta(hours=25))
        )
    # A day later the key is free again, even for another body.
    second = sms.SendSms(pb.SendSmsRequest(to=TO, message="new"), metadata=md, timeout=10)
    assert second.message_id != first.message_id
    assert sms.SendSms(pb.SendSmsRequest(to=TO, message="new"), metadata=md, timeout=10) == second


def test_20_concurrent_requests_with_one_key_create_one_message(
    sms: SmsServiceStub, sms_account: Account
) -> None:
    text = unique_text("race")
    request = pb.SendSmsRequest(to=TO, message=text, scheduled_at=later(hours=1))
    md = sms_account.md(idempotency_key=unique_text("key"))
    with ThreadPoolExecutor(20) as pool:
        replies = list(pool.map(lambda _: sms.SendSms(request, metadata=md, timeout=30), range(20)))
    assert len({r.message_id for r in replies}) == 1
    assert all(r == replies[0] for r in replies)
    assert history(sms, sms_account, text).pagination.total_items == 1


def test_20_concurrent_bulk_requests_with_one_key(
    sms: SmsServiceStub, sms_account: Account
) -> None:
    text = unique_text("race-bulk")
    request = pb.SendBulkSmsRequest(
        recipients=[TO] * 50, message=text, idempotency_key=unique_text("key")
    )
    futures = [
        sms.SendBulkSms.future(request, metadata=sms_account.md(test=True), timeout=30)
        for _ in range(20)
    ]
    replies = [f.result() for f in futures]
    assert len({r.batch_id for r in replies}) == 1
    assert history(sms, sms_account, text, test=True).pagination.total_items == 50
