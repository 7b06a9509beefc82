"""Quiet hours: whether a message to a number would arrive inside the recipient's night, and
until when it waits.

Pure functions of (window, number, instant): the accept path passes its own `now` (or the
message's `scheduled_at`), so tests give any instant without touching a clock.

The recipient's zone comes from the number (`phonenumbers.timezone`, libphonenumber's
prefix-to-zone data): one zone for most countries (+33 → Europe/Paris), several for the US,
Russia, Australia... When the data gives several, the client's `fallback_time_zone` decides
(UTC when it has none): the issue's rule, documented in docs/compliance.md. A window whose end
is before its start spans midnight (21:00-08:00). Times are wall-clock in that zone; across a
DST change the end is the first instant the wall clock shows it (zoneinfo's fold=0).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import phonenumbers
from phonenumbers import timezone as phone_zones

__all__ = [
    "QuietWindow",
    "held_until",
    "hold_for",
    "parse_clock",
    "recipient_zone",
    "zone_named",
]

HOLD_REASON = "quiet_hours"
#: The priority that never waits for the end of quiet hours (urgent; OTPs are sent with it).
URGENT_PRIORITY = 1
_CLOCK = re.compile(r"([01]\d|2[0-3]):([0-5]\d)")
_UNKNOWN = "Etc/Unknown"


@dataclass(frozen=True)
class QuietWindow:
    """[start, end) every day, in the recipient's local time."""

    start: dt.time
    end: dt.time
    fallback: ZoneInfo

    def contains(self, local: dt.time) -> bool:
        if self.start < self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end


def parse_clock(value: str) -> dt.time:
    """`HH:MM` (24 h) as a time; ValueError with a message fit for the user."""
    match = _CLOCK.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"must be a time of day HH:MM, e.g. 21:00 (got {value[:20]!r})")
    return dt.time(int(match[1]), int(match[2]))


def zone_named(name: str) -> ZoneInfo:
    """An IANA zone; ValueError when the name is unknown."""
    try:
        return _zone(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"must be an IANA time zone such as Europe/Paris (got {name[:40]!r})"
        ) from None


@lru_cache(maxsize=512)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


@lru_cache(maxsize=4096)
def _zones_of(number: str) -> tuple[str, ...]:
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return ()
    return tuple(z for z in phone_zones.time_zones_for_number(parsed) if z != _UNKNOWN)


def recipient_zone(number: str, fallback: ZoneInfo) -> ZoneInfo:
    """The zone `number` (E.164) is in: the number's only zone, else `fallback`."""
    zones = _zones_of(number)
    if len(zones) == 1:
        try:
            return _zone(zones[0])
        except (ZoneInfoNotFoundError, ValueError):
            return fallback
    return fallback


def held_until(window: QuietWindow, number: str, at: dt.datetime) -> dt.datetime | None:
    """When a message due at `at` (aware) to `number` may go, if `at` falls inside the quiet
    window in the recipient's local time; None when it may go at `at`."""
    zone = recipient_zone(number, window.fallback)
    local = at.astimezone(zone)
    if not window.contains(local.time().replace(tzinfo=None)):
        return None
    day = local.date()
    if not (window.start < window.end) and local.time() >= window.start:
        day += dt.timedelta(days=1)  # the window spans midnight; it ends tomorrow
    end = dt.datetime.combine(day, window.end, tzinfo=zone)
    return end.astimezone(dt.UTC)


def hold_for(
    window: QuietWindow | None, number: str, priority: int, at: dt.datetime
) -> dt.datetime | None:
    """The one rule of accept, resend and dispatch: when a message of `priority` to `number`,
    due at `at`, may go — the end of the window when it is on, the message not urgent and `at`
    inside it; None when it may go at `at`."""
    if window is None or priority == URGENT_PRIORITY:
        return None
    return held_until(window, number, at)
