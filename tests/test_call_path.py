"""The accept path's shortcuts give exactly what the generic code they replace gives.

Each shortcut exists for speed (docs/benchmarks.md, "What was changed for speed"); what a
caller sees must not move: the timestamps in responses, the datetimes stored in and read
from SQLite, which phone numbers are accepted and how they are normalised, the log lines.
"""

from __future__ import annotations

import datetime as dt
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path

import phonenumbers
import pytest
import structlog
from google.protobuf import timestamp_pb2
from sqlalchemy import TypeDecorator
from sqlalchemy.dialects import sqlite

from zimsend.server import auth, logs
from zimsend.server.sending import fields
from zimsend.server.services.convert import set_ts, ts
from zimsend.server.storage.types import UTCDateTime
from zimsend.v1 import sms_pb2

UTC = dt.UTC
_ZONES = (
    UTC,
    dt.timezone(dt.timedelta(hours=5, minutes=30)),
    dt.timezone(dt.timedelta(hours=-11)),
    dt.timezone(dt.timedelta(hours=14)),
)


def _instants(n: int, seed: int) -> list[dt.datetime]:
    """Aware datetimes over the whole range Python allows, in several zones, with
    microseconds (and some without: the boundaries where formats tend to differ)."""
    rng = random.Random(seed)
    low = dt.datetime(1, 1, 2, tzinfo=UTC)
    span = int((dt.datetime(9999, 12, 30, tzinfo=UTC) - low).total_seconds())
    out = []
    for i in range(n):
        moment = low + dt.timedelta(
            seconds=rng.randrange(span), microseconds=0 if i % 7 == 0 else rng.randrange(1_000_000)
        )
        out.append(moment.astimezone(rng.choice(_ZONES)))
    out.append(dt.datetime(1970, 1, 1, tzinfo=UTC))
    out.append(dt.datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))
    return out


def test_response_timestamps_are_the_ones_from_datetime_gives() -> None:
    for moment in _instants(20_000, seed=18):
        expected = timestamp_pb2.Timestamp()
        expected.FromDatetime(moment.astimezone(UTC))
        assert ts(moment) == expected, moment
    assert ts(None) is None
    # `set_ts` writes the same into a response's field; a naive datetime as `ts` reads it.
    values: list[dt.datetime | None] = [*_instants(2_000, seed=19), None]
    for value in [*values, dt.datetime(2026, 1, 1, 12)]:
        filled = sms_pb2.SendSmsResponse()
        set_ts(filled.queued_at, value)
        assert filled.HasField("queued_at") == (value is not None)
        if value is not None:
            assert filled.queued_at == ts(value), value


def test_sqlite_datetimes_are_stored_and_read_as_the_generic_type_decorator_does() -> None:
    dialect = sqlite.dialect()
    column = UTCDateTime().dialect_impl(dialect)
    assert isinstance(column, UTCDateTime)
    fast_bind = column.bind_processor(dialect)
    fast_result = column.result_processor(dialect, None)
    generic: TypeDecorator[dt.datetime] = column
    generic_bind = TypeDecorator.bind_processor(generic, dialect)
    generic_result = TypeDecorator.result_processor(generic, dialect, None)
    assert fast_bind is not None
    assert fast_result is not None
    assert generic_bind is not None
    assert generic_result is not None
    for moment in _instants(20_000, seed=5):
        stored = fast_bind(moment)
        assert stored == generic_bind(moment), moment
        read = fast_result(stored)
        assert read == generic_result(stored)
        assert read == moment
        assert read.tzinfo is UTC
    assert fast_bind(None) is None
    assert fast_result(None) is None
    with pytest.raises(ValueError, match="naive datetime"):
        fast_bind(dt.datetime(2026, 1, 1))  # a naive datetime: refused


def _numbers() -> list[str]:
    """E.164-shaped strings over every country calling code: random national numbers of
    every length (some with a leading 0 or the country's national prefix, which `parse`
    strips when what is left has a possible length), each region's example numbers of every
    type with and without that prefix, and short, long and unknown-code edge cases."""
    rng = random.Random(45)
    out: list[str] = ["+1", "+12", "+123", "+999123456", "+0612345678", "+2637" + "7" * 20]
    for code, regions in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.items():
        prefixes = {"0", "1"}
        for region in regions:
            metadata = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(code, region)
            if metadata is not None and metadata.national_prefix:
                prefixes.add(metadata.national_prefix)
            for kind in range(12):
                example = phonenumbers.example_number_for_type(region, kind)
                if example is None:
                    continue
                national = phonenumbers.national_significant_number(example)
                out.append(f"+{code}{national}")
                out.extend(f"+{code}{prefix}{national}" for prefix in prefixes)
                out.append(f"+{code}{national[:-1]}")
                out.append(f"+{code}{national}0")
        for length in range(1, 17):
            for _ in range(3):
                digits = "".join(rng.choice("0123456789") for _ in range(length))
                out.append(f"+{code}{digits}")
                out.append(f"+{code}{rng.choice(sorted(prefixes))}{digits}")
    return out


def _parsed_by_phonenumbers(value: str) -> phonenumbers.PhoneNumber | None:
    try:
        return phonenumbers.parse(value, None)
    except phonenumbers.NumberParseException:
        return None


def test_numbers_written_as_e164_are_read_exactly_as_phonenumbers_reads_them() -> None:
    """The fast path for "+digits" (`fields._parse_plain`) gives phonenumbers' own parse
    wherever it answers, and so the same accept / refuse decision and E.164 form."""
    numbers = _numbers()
    assert len(numbers) > 20_000
    answered = 0
    for value in numbers:
        expected = _parsed_by_phonenumbers(value)
        fast = fields._parse_plain(value) if fields._PLAIN_E164.fullmatch(value) else None
        if fast is not None:
            answered += 1
            assert fast == expected, value
        v = fields.Violations()
        got = fields.phone(v, "to", value)
        valid = (
            expected is not None
            and not expected.extension
            and phonenumbers.is_valid_number(expected)
        )
        if valid:
            assert expected is not None
            assert got == phonenumbers.format_number(expected, phonenumbers.PhoneNumberFormat.E164)
        else:
            assert got is None, value
    assert answered > len(numbers) // 2  # the fast path does answer most of them


def test_numbers_are_valid_exactly_when_phonenumbers_says_so() -> None:
    """`fields._is_valid` (mobile tried first) decides as `phonenumbers.is_valid_number` on
    every number the corpus parses, valid or not."""
    checked = valid = 0
    for value in _numbers():
        number = _parsed_by_phonenumbers(value)
        if number is None:
            continue
        expected = phonenumbers.is_valid_number(number)
        assert fields._is_valid(number) == expected, value
        checked += 1
        valid += expected
    assert checked > 20_000
    assert 1_000 < valid < checked  # both answers are exercised


class _Custom:
    """A value JSON has no type for, that says how structlog should show it."""

    def __structlog__(self) -> str:
        return "custom ☎"


def test_log_lines_are_the_ones_structlogs_json_renderer_writes() -> None:
    """`logs._render_json` (an encoder built once) writes what `JSONRenderer()` writes: key
    order, separators, escapes, and values JSON has no type for."""
    events: list[dict[str, object]] = [
        {"event": "sms.accepted", "request_id": "r-1", "replayed": False, "message_id": "m"},
        {"message_ids": ("a", "b"), "sandbox": True, "n": 3, "x": 1.5, "none": None},
        {"text": 'quote " backslash \\ newline \n tab \t', "unicode": "é ☎ 🎉 \u2028"},
        {"when": dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "custom": _Custom(), "s": {1}},
        {"nested": {"list": [1, {"k": "v"}], "empty": {}}, "exception": "Traceback …"},
    ]
    reference = structlog.processors.JSONRenderer()
    for event in events:
        assert logs._render_json(None, "info", dict(event)) == reference(None, "info", dict(event))


def test_log_timestamps_are_the_ones_timestamper_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    """`logs._utc_timestamp` writes `TimeStamper(fmt="iso", utc=True)`'s text
    (`datetime.isoformat`, "Z" for UTC): with microseconds, on whole seconds, across
    seconds and days, in any order."""
    rng = random.Random(7)
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    instants = [0, 999, 1_000_000_000, 1_767_225_599_999_999_000, 1_767_225_600_000_000_000]
    instants += [rng.randrange(0, 4_102_444_800 * 10**9) // 1000 * 1000 for _ in range(5_000)]
    instants += [n // 10**9 * 10**9 for n in instants[5:500]]  # whole seconds
    for ns in instants:
        monkeypatch.setattr(time, "time_ns", lambda ns=ns: ns)
        stamped = logs._utc_timestamp(None, "info", {})["timestamp"]
        expected = (epoch + dt.timedelta(microseconds=ns // 1000)).isoformat()
        assert stamped == expected.replace("+00:00", "Z"), ns


def test_new_request_ids_are_random_uuid4_text() -> None:
    """`auth.new_request_id` writes what `str(uuid.uuid4())` writes, and never twice the same."""
    ids = [auth.new_request_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == value
    assert {value[14] for value in ids} == {"4"}
    assert {value[19] for value in ids} == set("89ab")  # the variant's two bits, nothing else
    assert len({value[0] for value in ids}) == 16  # the other bits are random


_HOT_INFO_SCRIPT = """
import sys, time
import structlog
from zimsend.server import logs
time.time_ns = lambda: 1_767_225_600_123_456_000
logs.configure(sys.argv[1], json=sys.argv[2] == "json")
log = logs.get("zimsend.sms")
fields = [
    {"request_id": "r-1", "client_id": "c", "operation": "SendSms", "replayed": False,
     "sandbox": False, "message_id": "m-1"},
    {"request_id": "r-2", "client_id": "c", "operation": "SendBulkSms", "replayed": False,
     "sandbox": True, "message_ids": ("a", "b")},
    {"request_id": "r-3", "client_id": "c é ☎", "operation": "SendSms", "replayed": True,
     "sandbox": False, "message_ids": ()},
]
for with_context in (False, True):
    if with_context:
        structlog.contextvars.bind_contextvars(device_id="d-1", request_id="bound")
    for each in fields:
        log.info("sms.accepted", **each)
        logs.hot_info(log, "sms.accepted", **dict(each))
"""


@pytest.mark.parametrize(
    ("level", "renderer"), [("INFO", "json"), ("INFO", "console"), ("WARNING", "json")]
)
def test_hot_log_lines_are_the_ones_logger_info_writes(
    tmp_path: Path, level: str, renderer: str
) -> None:
    """`logs.hot_info` (the `sms.accepted` line of every send) writes exactly what
    `logger.info` writes, in JSON and on a terminal, with context variables bound, and
    nothing when INFO lines are off."""
    script = tmp_path / "hot.py"
    script.write_text(_HOT_INFO_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), level, renderer],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stderr.splitlines()
    if level == "WARNING":
        assert lines == []
        return
    assert len(lines) == 12
    assert lines[0::2] == lines[1::2]
    assert "m-1" in lines[0]
    assert "device_id" in lines[-1]
