"""Reading many messages: history pages, the streamed export, and the inbound inbox (SPEC §4).

Filters combine with AND and always include the client and the retention window (messages
older than `retention_days` are not shown even before the worker has deleted them, so the
answer does not depend on when the worker last ran). Dates accept RFC 3339 or a bare day
(`dates.parse_bound`), so the FAQ's `from_date=2025-01-01&to_date=2025-01-31&limit=100` works
as written. `search` is a case-insensitive substring of the body with `%` and `_` taken
literally.

Pages are newest first with offset pagination (what the documented `page`/`limit` promise).
The export walks the same filter oldest first with keyset pagination on (created_at, id), so a
year of messages streams in constant memory with every chunk an indexed range read.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import and_, func, or_
from sqlmodel import Session, col, select

from zimsend.server.config import Settings
from zimsend.server.errors import ErrorCode
from zimsend.server.storage import Database, InboundMessage, Message, MessageStatus, utcnow
from zimsend.v1 import common_pb2

from . import fields
from .dates import iso, parse_bound
from .fields import Violations
from .one_message import retention_start

DEFAULT_LIMIT = 50
MAX_LIMIT = 100
MAX_SEARCH_CHARS = fields.MAX_MESSAGE_CHARS
STATUS_NAMES = [n for n in common_pb2.MessageStatus.keys() if n.islower()]


@dataclass(frozen=True)
class Page:
    number: int
    limit: int


@dataclass(frozen=True)
class MessageFilter:
    client_id: str
    since: dt.datetime
    until: dt.datetime | None = None
    status: str | None = None
    to: str | None = None
    device_id: str | None = None
    search: str | None = None
    #: True: only `sent` messages flagged `delivery_report_missing`; False: all others.
    report_missing: bool | None = None


@dataclass(frozen=True)
class Listed:
    rows: list[Any]
    page: Page
    total: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total / self.page.limit)


def page_of(v: Violations, page: int | None, limit: int | None) -> Page:
    """`page` default 1, `limit` default 50 and at most 100; None means "not given". An
    explicit 0 is refused like any other value out of range: taking it for the default
    silently answered something other than what was asked."""
    if page is not None and page < 1:
        v.add(ErrorCode.INVALID_REQUEST, "page", f"must be 1 or more (got {page})")
    if limit is not None and not 1 <= limit <= MAX_LIMIT:
        v.add(ErrorCode.INVALID_REQUEST, "limit", f"must be 1-{MAX_LIMIT} (got {limit})")
    return Page(page or 1, limit or DEFAULT_LIMIT)


def period_of(
    v: Violations, from_date: str, to_date: str
) -> tuple[dt.datetime | None, dt.datetime | None]:
    """The optional `from_date`/`to_date` bounds, checked and in order."""
    bounds: list[dt.datetime | None] = []
    sides: tuple[tuple[str, str, Literal["from", "to"]], ...] = (
        ("from_date", from_date, "from"),
        ("to_date", to_date, "to"),
    )
    for name, value, side in sides:
        if not value.strip():
            bounds.append(None)
            continue
        try:
            bounds.append(parse_bound(value, side))
        except ValueError as exc:
            v.add(ErrorCode.INVALID_REQUEST, name, f"{exc} (got {fields.shown(value)})")
            bounds.append(None)
    start, end = bounds
    if start is not None and end is not None and start > end:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "from_date",
            f"must not be after to_date (got {iso(start)} > {iso(end)})",
        )
    return start, end


def message_filter(
    v: Violations,
    settings: Settings,
    client_id: str,
    *,
    from_date: str = "",
    to_date: str = "",
    status: int = 0,
    to: str = "",
    device_id: str = "",
    search: str = "",
    report_missing: bool | None = None,
) -> MessageFilter:
    """Check the history/export filters (violations go to `v`) and build the filter."""
    start, end = period_of(v, from_date, to_date)
    status_name = None
    if status:
        if status in common_pb2.MessageStatus.values():
            status_name = common_pb2.MessageStatus.Name(common_pb2.MessageStatus.ValueType(status))
        else:
            v.add(
                ErrorCode.INVALID_REQUEST,
                "status",
                f"must be one of {'/'.join(STATUS_NAMES)} (got {status})",
            )
    number = fields.phone(v, "to", to) if to.strip() else None
    if len(search) > MAX_SEARCH_CHARS:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "search",
            f"must be at most {MAX_SEARCH_CHARS} characters (got {len(search)})",
        )
    oldest = retention_start(settings, utcnow())
    return MessageFilter(
        client_id=client_id,
        since=max(start, oldest) if start else oldest,
        until=end,
        status=status_name,
        to=number,
        device_id=device_id.strip() or None,
        search=search or None,
        report_missing=report_missing,
    )


def _conditions(flt: MessageFilter) -> list[Any]:
    conditions: list[Any] = [Message.client_id == flt.client_id, Message.created_at >= flt.since]
    if flt.until is not None:
        conditions.append(Message.created_at <= flt.until)
    if flt.status is not None:
        conditions.append(Message.status == flt.status)
    if flt.to is not None:
        conditions.append(Message.to == flt.to)
    if flt.device_id is not None:
        conditions.append(Message.device_id == flt.device_id)
    if flt.search is not None:
        conditions.append(col(Message.body).icontains(flt.search, autoescape=True))
    if flt.report_missing is not None:
        flagged = (col(Message.status) == MessageStatus.SENT) & col(
            Message.delivery_report_missing_at
        ).is_not(None)
        conditions.append(flagged if flt.report_missing else ~flagged)
    return conditions


def list_messages(db: Database, flt: MessageFilter, page: Page) -> Listed:
    """One page of messages, newest first, and the number of matching messages."""
    conditions = _conditions(flt)
    with db.session() as session:
        total = _count(session, Message, conditions)
        rows = session.exec(
            select(Message)
            .where(*conditions)
            .order_by(col(Message.created_at).desc(), col(Message.id).desc())
            .offset((page.number - 1) * page.limit)
            .limit(page.limit)
        ).all()
    return Listed(list(rows), page, total)


def export_chunk(
    db: Database, flt: MessageFilter, after: tuple[dt.datetime, str] | None, size: int
) -> list[Message]:
    """The next `size` messages after `after` (created_at, id), oldest first."""
    conditions = _conditions(flt)
    if after is not None:
        created, message_id = after
        conditions.append(
            or_(
                col(Message.created_at) > created,
                and_(col(Message.created_at) == created, col(Message.id) > message_id),
            )
        )
    with db.session() as session:
        rows = session.exec(
            select(Message)
            .where(*conditions)
            .order_by(col(Message.created_at), col(Message.id))
            .limit(size)
        ).all()
    return list(rows)


def list_inbound(
    db: Database,
    settings: Settings,
    client_id: str,
    *,
    start: dt.datetime | None,
    end: dt.datetime | None,
    device_id: str,
    page: Page,
) -> Listed:
    """One page of inbound SMS, newest first (same retention as messages)."""
    oldest = retention_start(settings, utcnow())
    conditions: list[Any] = [
        InboundMessage.client_id == client_id,
        InboundMessage.received_at >= (max(start, oldest) if start else oldest),
    ]
    if end is not None:
        conditions.append(InboundMessage.received_at <= end)
    if device_id.strip():
        conditions.append(InboundMessage.device_id == device_id.strip())
    with db.session() as session:
        total = _count(session, InboundMessage, conditions)
        rows = session.exec(
            select(InboundMessage)
            .where(*conditions)
            .order_by(col(InboundMessage.received_at).desc(), col(InboundMessage.id).desc())
            .offset((page.number - 1) * page.limit)
            .limit(page.limit)
        ).all()
    return Listed(list(rows), page, total)


def _count(session: Session, model: Any, conditions: list[Any]) -> int:
    return int(session.exec(select(func.count()).select_from(model).where(*conditions)).one())
