"""RFC 3339 times as ZimSend writes them: the one formatter of the server, the SDK and the CLI.

In the client distribution because every process has it (the server depends on
zimsend-client; a phone installs only zimsend-client) and it needs nothing else. The default
form is byte for byte how the REST API prints a `google.protobuf.Timestamp` (protobuf's JSON
mapping, which Envoy uses): UTC with `Z`, fractions only when there are some, in 3 or 6 digits
— so the webhook envelope, the SDK's arguments, the CLI's JSON and CSV exports say a time as
the API does. Webhook `data` times have always shown exactly milliseconds (`…00.000Z`); they
keep that form (`milliseconds=True`), so no webhook body changed when the formatters became one.
"""

from __future__ import annotations

import datetime as dt

__all__ = ["rfc3339"]


def rfc3339(value: dt.datetime, *, milliseconds: bool = False) -> str:
    """`2025-01-15T10:30:00Z` in UTC (a naive datetime is taken as UTC).

    Fractions: by default only when there are some, as 3 digits when they are whole
    milliseconds and 6 otherwise (`.120Z`, `.123456Z`), as the API prints times; with
    `milliseconds`, always 3 digits, truncated (`.000Z`, `.123Z`), as webhook `data` shows them.
    """
    aware = value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
    utc = aware.astimezone(dt.UTC)
    head = utc.isoformat(timespec="seconds")[:19]
    micro = utc.microsecond
    if milliseconds or (micro and micro % 1000 == 0):
        return f"{head}.{micro // 1000:03d}Z"
    return f"{head}.{micro:06d}Z" if micro else f"{head}Z"
