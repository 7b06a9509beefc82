"""Small conversions between storage rows and protobuf messages, shared by the services."""

from __future__ import annotations

import datetime as dt
from typing import Any

from google.protobuf import timestamp_pb2


def ts(value: dt.datetime | None) -> timestamp_pb2.Timestamp | None:
    """An aware datetime as a Timestamp; None stays None (the field is then left unset)."""
    if value is None:
        return None
    out = timestamp_pb2.Timestamp()
    out.FromDatetime(value.astimezone(dt.UTC))
    return out


def paging(request: Any) -> tuple[int | None, int | None]:
    """`page` and `limit` of a list request as given, None when absent (they are proto3
    `optional`, so an explicit 0 can be refused instead of taken for the default)."""
    return (
        request.page if request.HasField("page") else None,
        request.limit if request.HasField("limit") else None,
    )
