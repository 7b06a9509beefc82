"""OtpService over gRPC against a real `zimsend serve` (SPEC.md §6, DESIGN "Security baseline").

What a test needs to know but the API never tells — the code of an OTP — it recovers from the
stored HMAC (`_otp.code_of`) or, end to end, by reading what the real phone agent sent. Sandbox
keys (`zs_test_`) let most tests run without a phone; their SMS go to the simulated device.
Races (50 concurrent guesses, on both engines) are in test_otp_concurrency.py.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _devices import outbox_lines, quick_tenant, start_agent, wait_for
from _otp import (
    PEPPER,
    TO,
    check,
    check_with,
    code_of,
    events,
    otp_row,
    send,
    struct,
    wrong_codes,
)
from _processes import zimsend_env as make_env
from _sms import (
    Account,
    error_reason,
    fails,
    message_of,
    new_account,
    new_device,
    retry_delay,
    violations,
)
from conftest import TEST_PEPPER, RunningServer
from sqlalchemy import update
from sqlmodel import col, select

from zimsend.server.accounts.credentials import hash_secret
from zimsend.server.storage import Database, Message, Otp, utcnow
from zimsend.v1 import common_pb2, sms_pb2, sms_pb2_grpc
from zimsend.v1 import otp_pb2 as pb
from zimsend.v1 import otp_pb2_grpc as pb_grpc

DEFAULT_MASKED = "Votre code de vérification est : ••••••"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """1 s heartbeats, so the agent's phone is online within a second."""
    return make_env(
        tmp_path_factory.mktemp("otp-data"), TEST_PEPPER, ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1"
    )


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server[1]) as ch:
        yield ch


@pytest.fixture(scope="module")
def otp(channel: grpc.Channel) -> pb_grpc.OtpServiceStub:
    return pb_grpc.OtpServiceStub(channel)


@pytest.fixture
def account(server_db: Database) -> Account:
    """A fresh client per test: the hourly limit and the outbox start empty."""
    return new_account(server_db, PEPPER, "otp-tests")


# --- Sending ------------------------------------------------------------------------------


def test_the_phone_gets_the_code_and_nothing_else_ever_shows_it(
    server: RunningServer,
    server_db: Database,
    channel: grpc.Channel,
    otp: pb_grpc.OtpServiceStub,
    zimsend_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """End to end with the real agent: the outbox file has the code; the response, status,
    history, both exports, every outbox event and the server log do not."""
    program, address = server
    tenant = quick_tenant(zimsend_env, channel, "otp-phone")
    device = tenant.create_device()
    tenant.update_device(device.device_id, send_interval_ms=0)
    with start_agent(
        zimsend_env,
        address,
        tenant.client_id,
        device.device_id,
        device.device_password,
        tmp_path,
        "--delivery-delay",
        "0.2",
        "--send-delay",
        "0.05",
    ):
        wait_for(lambda: tenant.online(device.device_id), 20, "phone online")
        before = utcnow()
        reply = otp.SendOtp(
            pb.SendOtpRequest(
                to="+33 6 12 34 56 78",
                length=8,
                expiry=600,
                template="ZimSend: {{code}} is your code ({{code}})",
                metadata=struct({"user": 7}),
            ),
            metadata=tenant.md(),
            timeout=10,
        )
        outbox = tmp_path / "outbox.jsonl"
        line = wait_for(
            lambda: next(
                (x for x in outbox_lines(outbox) if x["message_id"] == reply.message_id), None
            ),
            20,
            "sent",
        )
        sms = sms_pb2_grpc.SmsServiceStub(channel)
        status = wait_for(
            lambda: (
                (
                    s := sms.GetSmsStatus(
                        sms_pb2.GetSmsStatusRequest(message_id=reply.message_id),
                        metadata=tenant.md(),
                        timeout=10,
                    )
                ).status
                == common_pb2.delivered
                and s
            ),
            20,
            "delivered",
        )

    match = re.fullmatch(r"ZimSend: (\d{8}) is your code \((\d{8})\)", line["body"])
    assert match, line
    assert match[1] == match[2], line
    code = match[1]
    assert line["to"] == TO
    assert reply.success
    assert reply.status == common_pb2.queued
    assert reply.to == TO
    assert re.fullmatch(r"otp_[0-9a-f]{16}", reply.otp_id)
    assert re.fullmatch(r"msg_[0-9a-f]{16}", reply.message_id)
    expires = reply.expires_at.ToDatetime(tzinfo=dt.UTC)
    assert before + dt.timedelta(seconds=599) < expires < utcnow() + dt.timedelta(seconds=601)
    masked = "ZimSend: •••••• is your code (••••••)"
    assert status.message == masked
    assert status.priority == common_pb2.urgent
    assert status.metadata["user"] == 7

    seen: list[str] = [str(reply), str(status)]
    history = sms.ListSmsHistory(
        sms_pb2.ListSmsHistoryRequest(limit=100), metadata=tenant.md(), timeout=10
    )
    assert [m.message for m in history.data] == [masked]
    seen.append(str(history))
    for fmt in ("csv", "jsonl"):
        export = b"".join(
            chunk.data
            for chunk in sms.ExportSmsHistory(
                sms_pb2.ExportSmsHistoryRequest(format=fmt), metadata=tenant.md(), timeout=10
            )
        )
        assert masked in export.decode()
        seen.append(export.decode())
    verified = check_with(otp, tenant.md(), reply.otp_id, code)
    assert verified.valid
    kinds = events(server_db, tenant.client_id)  # device.* events too: all are checked
    assert Counter(e.event_type for e in kinds if e.event_type.startswith(("sms.", "otp."))) == {
        "sms.sent": 1,
        "sms.delivered": 1,
        "otp.verified": 1,
    }
    for event in kinds:
        seen.append(json.dumps(event.payload, ensure_ascii=False))
        if event.event_type.startswith("sms."):
            assert event.payload["message"] == masked
    (done,) = [e.payload for e in kinds if e.event_type == "otp.verified"]
    assert done == {
        "otp_id": reply.otp_id,
        "to": TO,
        "message_id": reply.message_id,
        "verified_at": done["verified_at"],
        "metadata": {"user": 7},
    }
    assert done["verified_at"].endswith("Z")
    seen.append(program.output())
    assert all(code not in text for text in seen)
    with server_db.session() as session:
        message = session.get(Message, reply.message_id)
        assert message is not None
        assert message.body == masked
        assert message.sealed_body is None
    assert otp_row(server_db, reply.otp_id).code_hash == hash_secret(PEPPER, code)


def test_defaults_urgent_masked_and_sealed(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account)
    row = otp_row(server_db, reply.otp_id)
    assert row.expires_at - row.created_at == dt.timedelta(seconds=300)
    assert row.max_attempts == 3
    assert row.attempts_used == 0
    assert row.to == TO
    assert row.message_id == reply.message_id
    assert reply.expires_at.ToDatetime(tzinfo=dt.UTC) == row.expires_at
    with server_db.session() as session:
        message = session.get(Message, reply.message_id)
        assert message is not None
    assert message.priority == 1
    assert message.test
    assert message.body == DEFAULT_MASKED
    # Segments and encoding are those of the real text: 6 digits instead of 6 bullets.
    assert message.encoding == "GSM-7"
    assert message.segments == 1


def test_a_live_key_needs_a_device_like_sendsms(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    error = fails(otp.SendOtp, pb.SendOtpRequest(to=TO), account.md())
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(error) == "NO_DEVICE_AVAILABLE"
    offline = new_device(server_db, PEPPER, account.client_id)
    error = fails(otp.SendOtp, pb.SendOtpRequest(to=TO), account.md(device=offline))
    assert error_reason(error) == "DEVICE_OFFLINE"
    error = fails(otp.SendOtp, pb.SendOtpRequest(to=TO), account.md(device="device_nope"))
    assert error_reason(error) == "INVALID_DEVICE_ID"
    with server_db.session() as session:
        assert not session.exec(select(Otp).where(Otp.client_id == account.client_id)).all()
    online = new_device(server_db, PEPPER, account.client_id, online=True)
    reply = send(otp, account, test=False, device=online)
    with server_db.session() as session:
        message = session.get(Message, reply.message_id)
        assert message is not None
        assert message.pinned_device_id == online
        assert message.status == "queued"
        assert message.sealed_body


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"template": "Your code"}, "template", "{{code}}"),
        ({"template": "   "}, "template", "{{code}}"),
        ({"length": 3}, "length", "4-8 digits (got 3)"),
        ({"length": 9}, "length", "4-8 digits (got 9)"),
        ({"expiry": 1801}, "expiry", "1-1800 seconds (got 1801)"),
        ({"expiry": -5}, "expiry", "1-1800 seconds (got -5)"),
        ({"to": "0612345678"}, "to", "international format"),
        ({"metadata": struct({"x": "y" * 1100})}, "metadata", "1024 bytes"),
    ],
)
def test_bad_fields_are_named_with_their_limits(
    otp: pb_grpc.OtpServiceStub, account: Account, fields: dict[str, Any], field: str, words: str
) -> None:
    error = fails(otp.SendOtp, pb.SendOtpRequest(**{"to": TO, **fields}), account.md(test=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(error) == ("INVALID_PHONE_NUMBER" if field == "to" else "INVALID_REQUEST")
    assert words in violations(error)[field]
    assert field in message_of(error)


def test_every_bad_field_in_one_answer_and_the_text_limit(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    error = fails(
        otp.SendOtp,
        pb.SendOtpRequest(to=TO, length=2, expiry=4000, template="x"),
        account.md(test=True),
    )
    assert set(violations(error)) == {"length", "expiry", "template"}
    long = "a" * 1594 + "{{code}}"  # 1594 + 6 digits = 1600: fits
    send(otp, account, template=long)
    error = fails(
        otp.SendOtp, pb.SendOtpRequest(to=TO, template=long, length=7), account.md(test=True)
    )
    assert error_reason(error) == "MESSAGE_TOO_LONG"
    assert "at most 1600 characters (got 1601)" in violations(error)["template"]
    with server_db.session() as session:
        assert len(session.exec(select(Otp).where(Otp.client_id == account.client_id)).all()) == 1


def test_the_eleventh_otp_in_an_hour_to_one_number_is_refused(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    sent = [send(otp, account).otp_id for _ in range(10)]
    error = fails(otp.SendOtp, pb.SendOtpRequest(to=TO), account.md(test=True))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == "OTP_RATE_LIMIT"
    assert "10 OTPs per hour" in message_of(error)
    assert 3590 < retry_delay(error) <= 3600
    send(otp, account, to="+33612345679")  # another number
    send(otp, new_account(server_db, PEPPER, "other"))  # another client, same number
    # The window slides: once the oldest is 59 minutes old it frees a place a minute later...
    age(server_db, sent, dt.timedelta(minutes=59))
    error = fails(otp.SendOtp, pb.SendOtpRequest(to=TO), account.md(test=True))
    assert 50 < retry_delay(error) <= 60
    # ...and codes older than an hour no longer count.
    age(server_db, sent, dt.timedelta(minutes=61))
    send(otp, account)


def age(db: Database, otp_ids: list[str], by: dt.timedelta) -> None:
    with db.write() as session:
        session.execute(
            update(Otp).where(col(Otp.id).in_(otp_ids)).values(created_at=utcnow() - by)
        )


# --- Verifying ----------------------------------------------------------------------------


def test_the_right_code_works_once(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account, length=4, metadata=struct({"order": "A-1"}))
    code = code_of(server_db, reply.otp_id)
    before = utcnow()
    verified = check(otp, account, reply.otp_id, f" {code} ")
    assert verified.success
    assert verified.valid
    assert verified.message == "Code verified"
    assert before - dt.timedelta(seconds=1) < verified.verified_at.ToDatetime(tzinfo=dt.UTC)
    assert not verified.HasField("attempts_remaining")
    error = fails(otp.VerifyOtp, pb.VerifyOtpRequest(otp_id=reply.otp_id, code=code), account.md())
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "OTP_NOT_FOUND"
    (event,) = [e for e in events(server_db, account.client_id) if e.event_type == "otp.verified"]
    assert event.payload["metadata"] == {"order": "A-1"}
    assert code not in json.dumps(event.payload)


def test_three_wrong_codes_invalidate_the_otp(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account, length=4)
    code = code_of(server_db, reply.otp_id)
    answers = [check(otp, account, reply.otp_id, wrong) for wrong in wrong_codes(code, 3)]
    assert [(a.success, a.valid, a.attempts_remaining) for a in answers] == [
        (True, False, 2),
        (True, False, 1),
        (True, False, 0),
    ]
    assert answers[0].message == "Invalid code; 2 attempts remaining"
    assert "no longer valid" in answers[2].message
    for attempt in (code, "0000"):  # even the right code, afterwards
        error = fails(
            otp.VerifyOtp, pb.VerifyOtpRequest(otp_id=reply.otp_id, code=attempt), account.md()
        )
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "OTP_MAX_ATTEMPTS"
        assert "send-otp" in message_of(error)
    assert otp_row(server_db, reply.otp_id).attempts_used == 3
    assert not [e for e in events(server_db, account.client_id) if e.event_type == "otp.verified"]


def test_two_wrong_codes_then_the_right_one(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account, length=4)
    code = code_of(server_db, reply.otp_id)
    for wrong in wrong_codes(code, 2):
        assert not check(otp, account, reply.otp_id, wrong).valid
    assert check(otp, account, reply.otp_id, code).valid


def test_an_expired_code_is_refused_without_spending_an_attempt(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account, length=4, expiry=1)
    code = code_of(server_db, reply.otp_id)
    time.sleep(1.2)
    error = fails(otp.VerifyOtp, pb.VerifyOtpRequest(otp_id=reply.otp_id, code=code), account.md())
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(error) == "OTP_EXPIRED"
    assert "expired at" in message_of(error)
    assert otp_row(server_db, reply.otp_id).attempts_used == 0


def test_unknown_and_other_clients_otps_are_not_found(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account, length=4)
    code = code_of(server_db, reply.otp_id)
    stranger = new_account(server_db, PEPPER, "stranger")
    for who, otp_id in (
        (stranger, reply.otp_id),
        (account, "otp_0123456789abcdef"),
        (account, "not an id"),
    ):
        error = fails(otp.VerifyOtp, pb.VerifyOtpRequest(otp_id=otp_id, code=code), who.md())
        assert error_reason(error) == "OTP_NOT_FOUND", otp_id
    assert otp_row(server_db, reply.otp_id).attempts_used == 0  # the stranger spent nothing
    assert check(otp, account, reply.otp_id, code).valid


def test_missing_fields_are_invalid_requests_that_spend_nothing(
    otp: pb_grpc.OtpServiceStub, account: Account, server_db: Database
) -> None:
    reply = send(otp, account, length=4)
    error = fails(otp.VerifyOtp, pb.VerifyOtpRequest(otp_id="", code=" "), account.md())
    assert error_reason(error) == "INVALID_REQUEST"
    assert set(violations(error)) == {"otp_id", "code"}
    error = fails(
        otp.VerifyOtp, pb.VerifyOtpRequest(otp_id=reply.otp_id, code="1" * 65), account.md()
    )
    assert "at most 64 characters" in violations(error)["code"]
    assert otp_row(server_db, reply.otp_id).attempts_used == 0
