"""Times as requests spell them (SPEC.md §1).

- `parse_instant` reads an RFC 3339 date-time (`2025-01-15T10:30:00Z`, `…+02:00`, fractions).
  A date-time without an offset is read as UTC: SPEC says timestamps are UTC, and a client
  that formats `datetime.utcnow().isoformat()` (no offset) means exactly that.
- `parse_bound` also accepts a bare day for the date filters: `from_date=2025-01-01` is the
  start of that day, `to_date=2025-01-31` the end of it (its last microsecond), UTC.

Both return aware UTC datetimes (the only kind storage accepts) and raise `ValueError` with a
message fit for the user; callers turn it into the field's violation.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Literal

from zimsend.timestamps import rfc3339

UTC = dt.UTC

_DATE = r"(?P<y>\d{4})-(?P<mo>\d{2})-(?P<d>\d{2})"
_TIME = r"(?P<h>\d{2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?)?"
_OFFSET = r"(?P<z>[Zz])|(?P<sign>[+-])(?P<oh>\d{2}):?(?P<om>\d{2})"
_INSTANT = re.compile(rf"{_DATE}[Tt ]{_TIME}(?:{_OFFSET})?")
_DAY = re.compile(_DATE)
_MAX_INPUT = 64

INSTANT_EXAMPLE = "2025-01-15T10:30:00Z"


def parse_instant(value: str) -> dt.datetime:
    """An RFC 3339 date-time as an aware UTC datetime (no offset = UTC)."""
    text = value.strip()
    match = _INSTANT.fullmatch(text) if len(text) <= _MAX_INPUT else None
    if match is None:
        raise ValueError(f"must be an RFC 3339 date-time like {INSTANT_EXAMPLE}")
    # The groups in `_INSTANT`'s order (one call instead of a dict per request).
    year, month, day, hour, minute, second, f, _z, sign, oh, om = match.groups()
    fraction = (f or "0")[:6].ljust(6, "0")
    try:
        naive = dt.datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second or 0),
            int(fraction),
        )
    except ValueError:
        raise ValueError(f"is not a real date-time (expected e.g. {INSTANT_EXAMPLE})") from None
    if not sign:
        return naive.replace(tzinfo=UTC)  # already UTC: nothing to convert, nothing to overflow
    hours, minutes = int(oh), int(om)
    if hours > 23 or minutes > 59:
        raise ValueError(f"has an impossible UTC offset (expected e.g. {INSTANT_EXAMPLE})")
    delta = dt.timedelta(hours=hours, minutes=minutes)
    offset = dt.timezone(delta if sign == "+" else -delta)
    try:
        return naive.replace(tzinfo=offset).astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range") from None


def parse_bound(value: str, side: Literal["from", "to"]) -> dt.datetime:
    """A filter bound: an RFC 3339 date-time, or a bare day (its start for `from`, its end for
    `to`), as an aware UTC datetime."""
    text = value.strip()
    day = _DAY.fullmatch(text)
    if day is None:
        try:
            return parse_instant(text)
        except ValueError:
            raise ValueError(
                f"must be a day like 2025-01-31 or an RFC 3339 date-time like {INSTANT_EXAMPLE}"
            ) from None
    try:
        date = dt.date(int(day["y"]), int(day["mo"]), int(day["d"]))
    except ValueError:
        raise ValueError("is not a real day (expected e.g. 2025-01-31)") from None
    start = dt.datetime.combine(date, dt.time(), UTC)
    if side == "from":
        return start
    return start + dt.timedelta(days=1) - dt.timedelta(microseconds=1)


#: How an answer or an error message writes a time: as the API prints it (zimsend.timestamps).
iso = rfc3339


def day_range(start: dt.date, end: dt.date) -> list[dt.date]:
    """Every day from `start` to `end`, both included."""
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
