"""The one RFC 3339 formatter (zimsend.timestamps): it writes times exactly as the API prints a
google.protobuf.Timestamp, and no webhook body or signature changed when the server's three
formatters and the SDK's became this one (issue 13 item 3)."""

from __future__ import annotations

import datetime as dt

from google.protobuf import timestamp_pb2
from hypothesis import given
from hypothesis import strategies as st

from zimsend.client._calls import time_arg
from zimsend.server.devicelink.transitions import iso as data_time
from zimsend.server.sending.dates import parse_instant
from zimsend.server.webhook_delivery.signing import encode_body, signature_headers
from zimsend.timestamps import rfc3339

WHEN = dt.datetime(2025, 1, 15, 10, 30, 0, 120000, tzinfo=dt.UTC)
_ZONES = st.sampled_from(
    [
        dt.UTC,
        dt.timezone(dt.timedelta(hours=2)),
        dt.timezone(-dt.timedelta(hours=5, minutes=30)),
    ]
)
_TIMES = st.datetimes(
    min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30), timezones=_ZONES
)


@given(_TIMES)
def test_a_time_is_written_as_the_api_prints_a_timestamp(value: dt.datetime) -> None:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    assert rfc3339(value) == stamp.ToJsonString()
    assert parse_instant(rfc3339(value)) == value


@given(_TIMES)
def test_webhook_data_times_keep_exactly_milliseconds(value: dt.datetime) -> None:
    before = value.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert rfc3339(value, milliseconds=True) == data_time(value) == before


def test_fractions_appear_only_when_present_in_utc_with_z() -> None:
    assert rfc3339(WHEN.replace(microsecond=0)) == "2025-01-15T10:30:00Z"
    assert rfc3339(WHEN) == "2025-01-15T10:30:00.120Z"
    assert rfc3339(WHEN.replace(microsecond=123456)) == "2025-01-15T10:30:00.123456Z"
    assert (
        rfc3339(dt.datetime(2025, 1, 15, 12, 30, tzinfo=dt.timezone(dt.timedelta(hours=2))))
        == "2025-01-15T10:30:00Z"
    )
    assert rfc3339(dt.datetime(2025, 1, 15, 10, 30)) == "2025-01-15T10:30:00Z"  # naive: UTC
    assert rfc3339(WHEN.replace(microsecond=0), milliseconds=True) == "2025-01-15T10:30:00.000Z"


def test_the_sdk_sends_times_as_the_api_prints_them() -> None:
    assert time_arg(WHEN) == "2025-01-15T10:30:00.120Z"
    assert time_arg(dt.datetime(2025, 1, 15, 10, 30)) == "2025-01-15T10:30:00Z"
    assert time_arg(dt.date(2025, 1, 15)) == "2025-01-15"


def test_a_webhook_body_and_its_signatures_are_byte_identical_to_before() -> None:
    # The expected bytes were computed by the formatters as they were before this change
    # (signing.rfc3339 through protobuf's Timestamp, transitions.iso through isoformat).
    data = {
        "message_id": "msg_1",
        "status": "sent",
        "sent_at": data_time(WHEN.replace(microsecond=0)),
        "delivered_at": data_time(WHEN.replace(microsecond=123456)),
    }
    body = encode_body("sms.delivered", "evt_1", WHEN, data)
    assert body == (
        b'{"event":"sms.delivered","event_id":"evt_1","timestamp":"2025-01-15T10:30:00.120Z",'
        b'"data":{"message_id":"msg_1","status":"sent","sent_at":"2025-01-15T10:30:00.000Z",'
        b'"delivered_at":"2025-01-15T10:30:00.123Z"}}'
    )
    headers = signature_headers("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "evt_1", body, WHEN)
    assert headers["X-Webhook-Signature"] == (
        "d1eb5e19b914a68033e60c9f603bfdc379f884f91389044dff834b1cb0acb0a3"
    )
    assert headers["webhook-signature"] == "v1,BjfH2zXFWkWbFhN8q67VsqULSwLd7SsX0gPf5PK8x1o="
