"""Every input rule of the SMS API, against a real server over gRPC (SPEC.md §1, §3, §4, §10).

Each bad input gets the documented code, a message naming the field and the limit, and a
google.rpc.BadRequest violation for that field. Nothing is queued by a rejected request.
This module's server refuses plain-http webhooks (the development setting is off).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import grpc
import pytest
from _sms import Account, error_reason, fails, later, message_of, violations
from google.protobuf import struct_pb2

from zimsend.server.sending.dates import parse_bound, parse_instant
from zimsend.v1 import common_pb2
from zimsend.v1 import sms_pb2 as pb
from zimsend.v1.sms_pb2_grpc import SmsServiceStub

UTC = dt.UTC
#: A priority number as the request type wants it (an out-of-range one on purpose, below).
Priority = common_pb2.Priority.ValueType
OK_TO = "+33612345678"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Production-like webhooks: only https:// is accepted."""
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(tmp_path_factory.mktemp("zimsend-data"), TEST_PEPPER)


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out


def check(error: grpc.RpcError, code: str, field: str, *fragments: str) -> None:
    assert error_reason(error) == code, error.details()
    assert field in violations(error), violations(error)
    assert f"{field}: " in message_of(error)
    for fragment in fragments:
        assert fragment in message_of(error), message_of(error)


# --- SendSms, field by field ----------------------------------------------------------------

SEND_CASES = [
    # (id, request fields, code, field, fragments the message must contain)
    ("to-missing", dict(to="", message="hi"), "INVALID_REQUEST", "to", ["+33612345678"]),
    (
        "to-national",
        dict(to="0612345678", message="hi"),
        "INVALID_PHONE_NUMBER",
        "to",
        ["'0612345678'", "+33612345678"],
    ),
    (
        "to-too-short",
        dict(to="+33 12", message="hi"),
        "INVALID_PHONE_NUMBER",
        "to",
        ["'+33 12' is not a valid phone number"],
    ),
    ("to-letters", dict(to="+1-800-FLOWERS", message="hi"), "INVALID_PHONE_NUMBER", "to", []),
    ("to-extension", dict(to="+33612345678 ext 5", message="hi"), "INVALID_PHONE_NUMBER", "to", []),
    ("to-00-prefix", dict(to="0033612345678", message="hi"), "INVALID_PHONE_NUMBER", "to", []),
    ("message-empty", dict(to=OK_TO, message=""), "INVALID_REQUEST", "message", ["1-1600"]),
    ("message-blank", dict(to=OK_TO, message="   "), "INVALID_REQUEST", "message", ["1-1600"]),
    (
        "message-1601",
        dict(to=OK_TO, message="a" * 1601),
        "MESSAGE_TOO_LONG",
        "message",
        ["must be 1-1600 characters (got 1601)"],
    ),
    (
        "priority-9",
        dict(to=OK_TO, message="hi", priority=9),
        "INVALID_PRIORITY",
        "priority",
        ["must be 1-5 or urgent/high/normal/low/very_low (got 9)"],
    ),
    (
        "priority-6",
        dict(to=OK_TO, message="hi", priority=6),
        "INVALID_PRIORITY",
        "priority",
        ["(got 6)"],
    ),
    (
        "priority-negative",
        dict(to=OK_TO, message="hi", priority=-1),
        "INVALID_PRIORITY",
        "priority",
        ["(got -1)"],
    ),
    (
        "metadata-too-big",
        dict(to=OK_TO, message="hi", metadata=struct({"k": "x" * 1100})),
        "INVALID_REQUEST",
        "metadata",
        ["1024 bytes", "got 1108 bytes"],
    ),
    (
        "scheduled-past",
        dict(to=OK_TO, message="hi", scheduled_at="2020-01-01T00:00:00Z"),
        "INVALID_SCHEDULED_DATE",
        "scheduled_at",
        ["must be in the future"],
    ),
    (
        "scheduled-31-days",
        dict(to=OK_TO, message="hi", scheduled_at=later(days=31)),
        "INVALID_SCHEDULED_DATE",
        "scheduled_at",
        ["at most 30 days ahead"],
    ),
    (
        "scheduled-garbage",
        dict(to=OK_TO, message="hi", scheduled_at="tomorrow 9am"),
        "INVALID_SCHEDULED_DATE",
        "scheduled_at",
        ["RFC 3339", "'tomorrow 9am'"],
    ),
    (
        "scheduled-impossible",
        dict(to=OK_TO, message="hi", scheduled_at="2030-02-30T09:00:00Z"),
        "INVALID_SCHEDULED_DATE",
        "scheduled_at",
        ["not a real date-time"],
    ),
    (
        "webhook-http",
        dict(to=OK_TO, message="hi", webhook_url="http://example.com/hook"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["HTTPS"],
    ),
    (
        "webhook-not-url",
        dict(to=OK_TO, message="hi", webhook_url="not a url"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        [],
    ),
    (
        "webhook-no-host",
        dict(to=OK_TO, message="hi", webhook_url="https://"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["well-formed"],
    ),
    (
        "webhook-ftp",
        dict(to=OK_TO, message="hi", webhook_url="ftp://example.com/"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        [],
    ),
    (
        "webhook-credentials",
        dict(to=OK_TO, message="hi", webhook_url="https://u:p@example.com/"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["credentials"],
    ),
    (
        "webhook-bad-port",
        dict(to=OK_TO, message="hi", webhook_url="https://example.com:99999/"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["1-65535"],
    ),
    # Issue 12 item 11: checked as configure checks an endpoint's url, not only at delivery.
    (
        "webhook-private",
        dict(to=OK_TO, message="hi", webhook_url="https://10.1.2.3/hook"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["10.1.2.3", "public HTTPS address"],
    ),
    (
        "webhook-metadata",
        dict(to=OK_TO, message="hi", webhook_url="https://169.254.169.254:8443/latest/meta-data/"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["169.254.169.254", "public HTTPS address"],
    ),
    (
        "webhook-loopback-spelling",
        dict(to=OK_TO, message="hi", webhook_url="https://2130706433:9/"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["public HTTPS address"],
    ),
    (
        "webhook-localhost",
        dict(to=OK_TO, message="hi", webhook_url="https://localhost:8080/"),
        "INVALID_WEBHOOK_URL",
        "webhook_url",
        ["this machine"],
    ),
    (
        "sim-slot-2",
        dict(to=OK_TO, message="hi", sim_slot=2),
        "INVALID_REQUEST",
        "sim_slot",
        ["must be 0 or 1 (got 2)"],
    ),
]


@pytest.mark.parametrize(
    ("fields", "code", "field", "fragments"),
    [c[1:] for c in SEND_CASES],
    ids=[c[0] for c in SEND_CASES],
)
def test_send_rejects(
    sms: SmsServiceStub,
    sms_account: Account,
    fields: dict[str, Any],
    code: str,
    field: str,
    fragments: list[str],
) -> None:
    error = fails(sms.SendSms, pb.SendSmsRequest(**fields), sms_account.md(test=True))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    check(error, code, field, *fragments)


def test_every_violation_is_reported_at_once(sms: SmsServiceStub, sms_account: Account) -> None:
    request = pb.SendSmsRequest(
        to="+33 12",
        message="a" * 1601,
        priority=Priority(9),
        scheduled_at="yesterday",
        webhook_url="http://x",
        sim_slot=7,
        metadata=struct({"k": "x" * 2000}),
    )
    error = fails(sms.SendSms, request, sms_account.md(test=True))
    assert set(violations(error)) == {
        "to",
        "message",
        "priority",
        "scheduled_at",
        "webhook_url",
        "sim_slot",
        "metadata",
    }
    assert error_reason(error) == "INVALID_PHONE_NUMBER"  # the first specific one
    assert message_of(error).startswith("to: '+33 12' is not a valid phone number")


def test_generic_then_specific_violation_reports_the_specific_code(
    sms: SmsServiceStub, sms_account: Account
) -> None:
    error = fails(
        sms.SendSms, pb.SendSmsRequest(to="", message="a" * 1601), sms_account.md(test=True)
    )
    assert error_reason(error) == "MESSAGE_TOO_LONG"
    assert set(violations(error)) == {"to", "message"}


def test_limits_themselves_are_accepted(sms: SmsServiceStub, sms_account: Account) -> None:
    metadata = struct({"k": "x" * (1024 - len('{"k":""}'))})  # exactly 1024 bytes
    reply = sms.SendSms(
        pb.SendSmsRequest(
            to="+33 6 12 34 56 78",
            message="a" * 1600,
            priority=Priority(5),
            metadata=metadata,
            scheduled_at=later(days=29, hours=23),
            webhook_url="https://example.com/hook",
            sim_slot=1,
        ),
        metadata=sms_account.md(test=True),
        timeout=10,
    )
    assert reply.to == "+33612345678"
    assert reply.segments == 11


# --- Bulk ------------------------------------------------------------------------------------


def test_bulk_without_recipients(sms: SmsServiceStub, sms_account: Account) -> None:
    error = fails(sms.SendBulkSms, pb.SendBulkSmsRequest(message="hi"), sms_account.md(test=True))
    check(error, "INVALID_REQUEST", "recipients", "1 to 100")


def test_bulk_101_recipients(sms: SmsServiceStub, sms_account: Account) -> None:
    request = pb.SendBulkSmsRequest(recipients=[OK_TO] * 101, message="hi")
    error = fails(sms.SendBulkSms, request, sms_account.md(test=True))
    check(error, "TOO_MANY_RECIPIENTS", "recipients", "at most 100", "got 101")


def test_bulk_names_the_bad_index(sms: SmsServiceStub, sms_account: Account) -> None:
    recipients = [OK_TO] * 3 + ["+33 12"] + [OK_TO] * 2 + ["nope"]
    error = fails(
        sms.SendBulkSms,
        pb.SendBulkSmsRequest(recipients=recipients, message="hi"),
        sms_account.md(test=True),
    )
    check(
        error,
        "INVALID_PHONE_NUMBER",
        "recipients[3]",
        "recipients[3]: '+33 12' is not a valid phone number",
    )
    assert set(violations(error)) == {"recipients[3]", "recipients[6]"}


def test_bulk_shares_the_send_rules(sms: SmsServiceStub, sms_account: Account) -> None:
    request = pb.SendBulkSmsRequest(
        recipients=[OK_TO],
        message="",
        priority=Priority(8),
        scheduled_at=later(days=40),
        webhook_url="http://x",
    )
    error = fails(sms.SendBulkSms, request, sms_account.md(test=True))
    assert set(violations(error)) == {"message", "priority", "scheduled_at", "webhook_url"}


def test_personalized_names_index_and_field(sms: SmsServiceStub, sms_account: Account) -> None:
    request = pb.SendBulkPersonalizedSmsRequest(
        messages=[
            pb.PersonalizedMessage(to=OK_TO, message="ok"),
            pb.PersonalizedMessage(to="123", message="ok"),
            pb.PersonalizedMessage(to=OK_TO, message="a" * 1601),
            pb.PersonalizedMessage(to=OK_TO, message="ok", metadata=struct({"k": "x" * 1100})),
        ]
    )
    error = fails(sms.SendBulkPersonalizedSms, request, sms_account.md(test=True))
    assert set(violations(error)) == {
        "messages[1].to",
        "messages[2].message",
        "messages[3].metadata",
    }
    assert error_reason(error) == "INVALID_PHONE_NUMBER"


def test_personalized_limits(sms: SmsServiceStub, sms_account: Account) -> None:
    empty = fails(
        sms.SendBulkPersonalizedSms, pb.SendBulkPersonalizedSmsRequest(), sms_account.md(test=True)
    )
    check(empty, "INVALID_REQUEST", "messages")
    many = pb.SendBulkPersonalizedSmsRequest(
        messages=[pb.PersonalizedMessage(to=OK_TO, message="hi")] * 101
    )
    check(
        fails(sms.SendBulkPersonalizedSms, many, sms_account.md(test=True)),
        "TOO_MANY_RECIPIENTS",
        "messages",
        "got 101",
    )


# --- Idempotency key ---------------------------------------------------------------------


def test_idempotency_key_too_long(sms: SmsServiceStub, sms_account: Account) -> None:
    request = pb.SendSmsRequest(to=OK_TO, message="hi", idempotency_key="k" * 256)
    check(
        fails(sms.SendSms, request, sms_account.md(test=True)),
        "INVALID_REQUEST",
        "idempotency_key",
        "1-255",
    )


def test_idempotency_header_and_field_must_agree(sms: SmsServiceStub, sms_account: Account) -> None:
    request = pb.SendSmsRequest(to=OK_TO, message="hi", idempotency_key="a")
    error = fails(sms.SendSms, request, sms_account.md(test=True, idempotency_key="b"))
    check(error, "INVALID_REQUEST", "idempotency_key", "Idempotency-Key header")


# --- History, stats, export, inbox ---------------------------------------------------------

LIST_CASES = [
    ("limit-101", dict(limit=101), "limit", ["must be 1-100 (got 101)"]),
    ("limit-negative", dict(limit=-5), "limit", ["(got -5)"]),
    ("limit-zero", dict(limit=0), "limit", ["must be 1-100 (got 0)"]),
    ("page-negative", dict(page=-1), "page", ["(got -1)"]),
    ("page-zero", dict(page=0), "page", ["must be 1 or more (got 0)"]),
    ("from-garbage", dict(from_date="01/02/2025"), "from_date", ["2025-01-31", "'01/02/2025'"]),
    ("to-impossible-day", dict(to_date="2025-02-30"), "to_date", ["not a real day"]),
    (
        "from-after-to",
        dict(from_date="2025-02-01", to_date="2025-01-31"),
        "from_date",
        ["must not be after to_date"],
    ),
    ("status-unknown", dict(status=42), "status", ["queued", "(got 42)"]),
    ("to-invalid", dict(to="12"), "to", ["not in international format"]),
    ("search-too-long", dict(search="x" * 1601), "search", ["at most 1600"]),
]


@pytest.mark.parametrize(
    ("fields", "field", "fragments"), [c[1:] for c in LIST_CASES], ids=[c[0] for c in LIST_CASES]
)
def test_history_rejects(
    sms: SmsServiceStub,
    sms_account: Account,
    fields: dict[str, Any],
    field: str,
    fragments: list[str],
) -> None:
    error = fails(sms.ListSmsHistory, pb.ListSmsHistoryRequest(**fields), sms_account.md())
    expected = "INVALID_PHONE_NUMBER" if field == "to" else "INVALID_REQUEST"
    check(error, expected, field, *fragments)


def test_stats_rejects_bad_dates(sms: SmsServiceStub, sms_account: Account) -> None:
    error = fails(sms.GetSmsStats, pb.GetSmsStatsRequest(from_date="last week"), sms_account.md())
    check(error, "INVALID_REQUEST", "from_date")
    future = fails(
        sms.GetSmsStats, pb.GetSmsStatsRequest(from_date=later(days=3)), sms_account.md()
    )
    check(future, "INVALID_REQUEST", "from_date", "to_date defaults to now")


def test_inbox_rejects_bad_paging(sms: SmsServiceStub, sms_account: Account) -> None:
    error = fails(sms.ListInboundSms, pb.ListInboundSmsRequest(limit=500), sms_account.md())
    check(error, "INVALID_REQUEST", "limit", "got 500")


def test_export_rejects_unknown_format(sms: SmsServiceStub, sms_account: Account) -> None:
    with pytest.raises(grpc.RpcError) as info:
        list(
            sms.ExportSmsHistory(
                pb.ExportSmsHistoryRequest(format="xml"), metadata=sms_account.md(), timeout=10
            )
        )
    check(info.value, "INVALID_REQUEST", "format", "csv or jsonl", "'xml'")


# --- Dates, as requests spell them (pure functions) ----------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-15T10:30:00Z", dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC)),
        ("2025-01-15t10:30:00z", dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC)),
        ("2025-01-15T12:30:00+02:00", dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC)),
        ("2025-01-15T10:30:00.123456789Z", dt.datetime(2025, 1, 15, 10, 30, 0, 123456, UTC)),
        ("2025-01-15T10:30:00", dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC)),  # no offset: UTC
        ("2025-01-15 10:30", dt.datetime(2025, 1, 15, 10, 30, tzinfo=UTC)),
    ],
)
def test_parse_instant(text: str, expected: dt.datetime) -> None:
    assert parse_instant(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "2025-01-15",
        "15/01/2025 10:30",
        "2025-01-15T25:00:00Z",
        "2025-01-15T10:30:00+24:00",
        "x" * 100,
    ],
)
def test_parse_instant_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"date-time|UTC offset|out of range"):
        parse_instant(text)


def test_bare_days_cover_the_whole_day() -> None:
    assert parse_bound("2025-01-01", "from") == dt.datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_bound("2025-01-31", "to") == dt.datetime(2025, 1, 31, 23, 59, 59, 999999, UTC)
    assert parse_bound("2025-01-31T12:00:00Z", "to") == dt.datetime(2025, 1, 31, 12, tzinfo=UTC)
