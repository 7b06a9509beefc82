"""The pure rules behind opt-outs and quiet hours (issue 16 items 3, 4): which inbound texts are
stop or start keywords, which zone a number is in, and when a quiet window lets a message go —
with the instant given, so every case runs at any time of day."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from zimsend.server.compliance import keywords
from zimsend.server.compliance.quiet_hours import (
    QuietWindow,
    held_until,
    parse_clock,
    recipient_zone,
)

UTC = dt.UTC
PARIS = ZoneInfo("Europe/Paris")
NIGHT = QuietWindow(dt.time(21, 0), dt.time(8, 0), ZoneInfo("UTC"))


@pytest.mark.parametrize(
    "text",
    [
        "STOP",
        "Stop",
        " stop ",
        "STOP ALL",
        "stop   all",
        "Unsubscribe",
        "ARRET",
        "Arrêt",
        "arrêt\n",
        "désabonner".replace("é", "e"),
        "DESABONNER",
    ],
)
def test_default_stop_keywords_match_in_any_case_and_spacing(text: str) -> None:
    assert keywords.match(text, keywords.DEFAULT_STOP, keywords.DEFAULT_START) == "stop"


@pytest.mark.parametrize("text", ["START", "start", " Unstop "])
def test_default_start_keywords(text: str) -> None:
    assert keywords.match(text, keywords.DEFAULT_STOP, keywords.DEFAULT_START) == "start"


@pytest.mark.parametrize(
    "text", ["STOP please", "stopp", "", "   ", "Can you stop?", "ARRÊTE", "stop" * 100]
)
def test_anything_but_the_keyword_alone_is_a_plain_message(text: str) -> None:
    assert keywords.match(text, keywords.DEFAULT_STOP, keywords.DEFAULT_START) is None


def test_a_client_keyword_list_replaces_the_defaults() -> None:
    assert keywords.match("halt", ["HALT"], ["GO"]) == "stop"
    assert keywords.match("stop", ["HALT"], ["GO"]) is None
    assert keywords.match("Go", ["HALT"], ["GO"]) == "start"


def test_a_decomposed_accent_matches_the_composed_keyword() -> None:
    assert keywords.match("ARRE\u0302T", keywords.DEFAULT_STOP, []) == "stop"


def test_a_number_with_one_zone_uses_it_and_one_with_several_the_fallback() -> None:
    assert recipient_zone("+33612345678", ZoneInfo("UTC")) == PARIS
    assert recipient_zone("+263771234567", ZoneInfo("UTC")) == ZoneInfo("Africa/Harare")
    # +61 4xx (Australian mobiles) spans the whole country: the client's zone decides.
    assert recipient_zone("+61412345678", ZoneInfo("Australia/Perth")) == ZoneInfo(
        "Australia/Perth"
    )
    assert recipient_zone("+61412345678", ZoneInfo("UTC")) == ZoneInfo("UTC")


def test_inside_an_overnight_window_a_message_waits_for_the_local_morning() -> None:
    # 22:30 in Paris (CET, UTC+1) on 15 January: held until 08:00 Paris the next day.
    at = dt.datetime(2026, 1, 15, 21, 30, tzinfo=UTC)
    assert held_until(NIGHT, "+33612345678", at) == dt.datetime(2026, 1, 16, 7, 0, tzinfo=UTC)
    # 06:59 Paris: held until 08:00 the same day.
    early = dt.datetime(2026, 1, 16, 5, 59, tzinfo=UTC)
    assert held_until(NIGHT, "+33612345678", early) == dt.datetime(2026, 1, 16, 7, 0, tzinfo=UTC)


def test_outside_the_window_a_message_goes_at_once() -> None:
    assert held_until(NIGHT, "+33612345678", dt.datetime(2026, 1, 16, 7, 0, tzinfo=UTC)) is None
    assert held_until(NIGHT, "+33612345678", dt.datetime(2026, 1, 15, 19, 59, tzinfo=UTC)) is None


def test_the_window_is_the_recipients_local_time_not_the_servers() -> None:
    at = dt.datetime(2026, 1, 15, 21, 30, tzinfo=UTC)  # 22:30 Paris, 23:30 Harare, 16:30 NY
    assert held_until(NIGHT, "+263771234567", at) == dt.datetime(2026, 1, 16, 6, 0, tzinfo=UTC)
    assert held_until(NIGHT, "+12025550123", at) is None


def test_a_daytime_window_and_summer_time() -> None:
    lunch = QuietWindow(dt.time(12, 0), dt.time(14, 0), ZoneInfo("UTC"))
    # 13:00 Paris in July is 11:00 UTC (CEST, UTC+2): held until 14:00 Paris = 12:00 UTC.
    at = dt.datetime(2026, 7, 1, 11, 0, tzinfo=UTC)
    assert held_until(lunch, "+33612345678", at) == dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert held_until(lunch, "+33612345678", dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)) is None


def test_the_window_ends_across_a_dst_change_at_local_wall_clock_time() -> None:
    # Night of 28-29 March 2026: Paris goes from UTC+1 to UTC+2 at 02:00 local.
    at = dt.datetime(2026, 3, 28, 22, 0, tzinfo=UTC)  # 23:00 Paris
    assert held_until(NIGHT, "+33612345678", at) == dt.datetime(2026, 3, 29, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize("value", ["24:00", "9:00", "21h00", "", "21:60"])
def test_clock_times_are_hh_mm(value: str) -> None:
    with pytest.raises(ValueError, match="HH:MM"):
        parse_clock(value)
