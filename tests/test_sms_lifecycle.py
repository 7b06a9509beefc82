"""One message by id: GetSmsStatus, CancelSms, ResendSms (SPEC.md §3), over gRPC against a
real server. States the API cannot produce by itself (a message a phone took, sent, or that
failed) are written into the server's database, as the dispatcher would write them.
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
    insert_message,
    later,
    message_of,
    new_account,
    new_device,
    unique_text,
    update_message,
)
from conftest import TEST_PEPPER
from google.protobuf import json_format, struct_pb2

from zimsend.server.accounts import credentials
from zimsend.server.storage import Database, MessagePart, Otp, utcnow
from zimsend.v1 import common_pb2
from zimsend.v1 import sms_pb2 as pb
from zimsend.v1.sms_pb2_grpc import SmsServiceStub

PEPPER = TEST_PEPPER.encode()
TO = "+33612345678"


@pytest.fixture(scope="module")
def phone(server_db: Database, sms_account: Account) -> str:
    return new_device(server_db, PEPPER, sms_account.client_id)


@pytest.fixture(scope="module")
def stranger(server_db: Database) -> Account:
    return new_account(server_db, PEPPER, "stranger")


def scheduled(sms: SmsServiceStub, account: Account, **fields: Any) -> str:
    """A live message that stays `queued` (due in an hour; no phone takes it before)."""
    fields.setdefault("message", unique_text("lifecycle"))
    reply = sms.SendSms(
        pb.SendSmsRequest(to=TO, scheduled_at=later(hours=1), **fields),
        metadata=account.md(),
        timeout=10,
    )
    return str(reply.message_id)


def failed(server_db: Database, message_id: str, device: str) -> None:
    now = utcnow()
    update_message(
        server_db,
        message_id,
        status="failed",
        device_id=device,
        processing_at=now,
        failed_at=now,
        error_code="NETWORK_ERROR",
        error_message="no signal",
    )


def status_of(sms: SmsServiceStub, account: Account, message_id: str) -> pb.GetSmsStatusResponse:
    return sms.GetSmsStatus(
        pb.GetSmsStatusRequest(message_id=message_id), metadata=account.md(), timeout=10
    )


# --- Status ----------------------------------------------------------------------------------


def test_status_shows_the_documented_fields(sms: SmsServiceStub, sms_account: Account) -> None:
    meta = struct_pb2.Struct()
    meta.update({"order": 7})
    message_id = scheduled(
        sms,
        sms_account,
        message="Rappel de rendez-vous demain",
        priority=common_pb2.high,
        metadata=meta,
    )
    reply = status_of(sms, sms_account, message_id)
    assert reply.success
    assert reply.message_id == message_id
    assert reply.status == common_pb2.queued
    assert (reply.to, reply.message) == (TO, "Rappel de rendez-vous demain")
    assert reply.priority == common_pb2.high
    assert (reply.segments, reply.encoding, reply.attempts) == (1, common_pb2.GSM7, 1)
    assert reply.device_id == ""
    assert reply.batch_id == ""
    for present in ("created_at", "queued_at", "scheduled_at"):
        assert reply.HasField(present), present
    for absent in ("sent_at", "delivered_at", "failed_at", "cancelled_at", "error"):
        assert not reply.HasField(absent), absent
    assert json_format.MessageToDict(reply.metadata) == {"order": 7}
    as_json = json_format.MessageToDict(reply, preserving_proto_field_name=True)
    assert (as_json["status"], as_json["priority"], as_json["encoding"]) == (
        "queued",
        "high",
        "GSM7",
    )


def test_status_of_a_failed_message_shows_its_error(
    sms: SmsServiceStub, sms_account: Account, server_db: Database, phone: str
) -> None:
    message_id = scheduled(sms, sms_account)
    failed(server_db, message_id, phone)
    reply = status_of(sms, sms_account, message_id)
    assert reply.status == common_pb2.failed
    assert (reply.error.code, reply.error.message) == ("NETWORK_ERROR", "no signal")
    assert reply.device_id == phone
    assert reply.HasField("failed_at")


@pytest.mark.parametrize("message_id", ["msg_0000000000000000", "", "nonsense' OR 1=1 --"])
def test_unknown_message(sms: SmsServiceStub, sms_account: Account, message_id: str) -> None:
    error = fails(sms.GetSmsStatus, pb.GetSmsStatusRequest(message_id=message_id), sms_account.md())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "MESSAGE_NOT_FOUND"
    assert "SELECT" not in message_of(error)
    assert "Traceback" not in message_of(error)


def test_another_clients_message_is_not_found(
    sms: SmsServiceStub, sms_account: Account, stranger: Account
) -> None:
    message_id = scheduled(sms, sms_account)
    for call, request in [
        (sms.GetSmsStatus, pb.GetSmsStatusRequest(message_id=message_id)),
        (sms.CancelSms, pb.CancelSmsRequest(message_id=message_id)),
        (sms.ResendSms, pb.ResendSmsRequest(message_id=message_id)),
    ]:
        assert error_reason(fails(call, request, stranger.md())) == "MESSAGE_NOT_FOUND"
    assert status_of(sms, sms_account, message_id).status == common_pb2.queued  # untouched


def test_messages_older_than_retention_are_not_found(
    sms: SmsServiceStub, sms_account: Account, server_db: Database
) -> None:
    old = insert_message(
        server_db,
        sms_account.client_id,
        status="delivered",
        created_at=utcnow() - dt.timedelta(days=91),
    )
    recent = insert_message(
        server_db,
        sms_account.client_id,
        status="delivered",
        created_at=utcnow() - dt.timedelta(days=89),
    )
    error = fails(sms.GetSmsStatus, pb.GetSmsStatusRequest(message_id=old), sms_account.md())
    assert error_reason(error) == "MESSAGE_NOT_FOUND"
    assert "90-day" in message_of(error)
    assert status_of(sms, sms_account, recent).status == common_pb2.delivered


# --- Cancel ----------------------------------------------------------------------------------


def test_cancel_a_scheduled_message(
    sms: SmsServiceStub, sms_account: Account, server_db: Database
) -> None:
    """The FAQ: `curl -X DELETE …/v1/sms/msg_…` of a scheduled SMS."""
    message_id = scheduled(sms, sms_account)
    reply = sms.CancelSms(
        pb.CancelSmsRequest(message_id=message_id), metadata=sms_account.md(), timeout=10
    )
    assert reply.success
    assert reply.message == "Message cancelled"
    assert (reply.message_id, reply.status) == (message_id, common_pb2.cancelled)
    status = status_of(sms, sms_account, message_id)
    assert status.status == common_pb2.cancelled
    assert status.HasField("cancelled_at")
    assert get_message(server_db, message_id).status == "cancelled"


@pytest.mark.parametrize("state", ["processing", "sent", "delivered", "failed", "cancelled"])
def test_only_queued_messages_can_be_cancelled(
    sms: SmsServiceStub, sms_account: Account, server_db: Database, phone: str, state: str
) -> None:
    message_id = scheduled(sms, sms_account)
    update_message(
        server_db, message_id, status=state, device_id=None if state == "cancelled" else phone
    )
    error = fails(sms.CancelSms, pb.CancelSmsRequest(message_id=message_id), sms_account.md())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION  # HTTP 400
    assert error_reason(error) == "CANNOT_CANCEL_MESSAGE"
    assert f"is {state}" in message_of(error)
    assert "only queued" in message_of(error)
    assert get_message(server_db, message_id).status == state


def test_concurrent_cancels_succeed_once(sms: SmsServiceStub, sms_account: Account) -> None:
    message_id = scheduled(sms, sms_account)

    def cancel(_: int) -> str:
        try:
            sms.CancelSms(
                pb.CancelSmsRequest(message_id=message_id), metadata=sms_account.md(), timeout=30
            )
            return "ok"
        except grpc.RpcError as error:
            return error_reason(error)

    with ThreadPoolExecutor(10) as pool:
        outcomes = sorted(pool.map(cancel, range(10)))
    assert outcomes == ["CANNOT_CANCEL_MESSAGE"] * 9 + ["ok"]


# --- Resend ----------------------------------------------------------------------------------


def test_resend_a_failed_message(
    sms: SmsServiceStub, sms_account: Account, server_db: Database, phone: str
) -> None:
    message_id = scheduled(sms, sms_account)
    failed(server_db, message_id, phone)
    with server_db.write() as session:
        session.add(MessagePart(message_id=message_id, part_index=0, status="failed"))
    before = utcnow()
    reply = sms.ResendSms(
        pb.ResendSmsRequest(message_id=message_id), metadata=sms_account.md(), timeout=10
    )
    assert reply.success
    assert reply.message_id == message_id
    assert (reply.status, reply.attempts) == (common_pb2.queued, 2)
    row = get_message(server_db, message_id)
    assert (row.status, row.attempts) == ("queued", 1)
    assert (row.error_code, row.error_message, row.device_id, row.failed_at) == (None,) * 4
    assert before <= row.due_at <= utcnow()
    assert row.expires_at == row.due_at + dt.timedelta(hours=24)
    assert row.queued_at == reply.queued_at.ToDatetime(dt.UTC)
    with server_db.session() as session:
        assert session.get(MessagePart, (message_id, 0)) is None  # the new attempt starts clean
    status = status_of(sms, sms_account, message_id)
    assert status.attempts == 2
    assert not status.HasField("error")
    # Queued again: a second resend is refused, naming the status.
    error = fails(sms.ResendSms, pb.ResendSmsRequest(message_id=message_id), sms_account.md())
    assert error_reason(error) == "CANNOT_RESEND_MESSAGE"
    assert "is queued" in message_of(error)
    # And failing again allows a third attempt.
    failed(server_db, message_id, phone)
    again = sms.ResendSms(
        pb.ResendSmsRequest(message_id=message_id), metadata=sms_account.md(), timeout=10
    )
    assert again.attempts == 3


@pytest.mark.parametrize("state", ["queued", "processing", "sent", "delivered", "cancelled"])
def test_only_failed_messages_can_be_resent(
    sms: SmsServiceStub, sms_account: Account, server_db: Database, phone: str, state: str
) -> None:
    message_id = scheduled(sms, sms_account)
    if state != "queued":
        update_message(
            server_db, message_id, status=state, device_id=None if state == "cancelled" else phone
        )
    error = fails(sms.ResendSms, pb.ResendSmsRequest(message_id=message_id), sms_account.md())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "CANNOT_RESEND_MESSAGE"
    assert f"is {state}" in message_of(error)
    assert get_message(server_db, message_id).status == state


def test_an_otp_message_is_not_resent(
    sms: SmsServiceStub, sms_account: Account, server_db: Database, phone: str
) -> None:
    """Its text (the code) is gone once it failed; a new OTP is the way."""
    message_id = scheduled(sms, sms_account)
    failed(server_db, message_id, phone)
    with server_db.write() as session:
        session.add(
            Otp(
                id=credentials.new_id("otp"),
                client_id=sms_account.client_id,
                to=TO,
                code_hash="x",
                message_id=message_id,
                expires_at=utcnow() + dt.timedelta(minutes=5),
            )
        )
    error = fails(sms.ResendSms, pb.ResendSmsRequest(message_id=message_id), sms_account.md())
    assert error_reason(error) == "CANNOT_RESEND_MESSAGE"
    assert "send-otp" in message_of(error)
    assert get_message(server_db, message_id).status == "failed"
