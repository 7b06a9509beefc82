"""The accept path's message INSERT (`storage.inserts.RowInsert` on tuples, the driver's
executemany) writes exactly the rows the ORM writes, on SQLite and PostgreSQL: every column
compared as the database stores it (SQLite: `quote()`, which shows the storage class and
bytes; PostgreSQL: the column's text form, and `json` keeps the text it was given)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import text

from zimsend.server.sending.intake import _INSERT, QueuedMessage
from zimsend.server.storage import Client, Database, Device, Message, MessageStatus
from zimsend.server.storage.tables import table_of

UTC = dt.UTC
HARARE = dt.timezone(dt.timedelta(hours=2))
NOW = dt.datetime(2026, 12, 5, 20, 56, 19, 168553, tzinfo=UTC)


def _rows() -> list[QueuedMessage]:
    """Messages as the accept path builds them: single, bulk, scheduled (in another time
    zone), held by quiet hours, pinned, with and without metadata; several share their
    times (the INSERT converts each distinct time once)."""
    scheduled = dt.datetime(2026, 12, 20, 9, 0, 0, 0, tzinfo=HARARE)  # whole seconds
    hold = dt.datetime(2026, 12, 6, 6, 0, 0, 1, tzinfo=UTC)
    ttl = dt.timedelta(hours=72)
    base: dict[str, Any] = dict(
        client_id="client_rows",
        batch_id=None,
        to="+263771234567",
        body="Hello",
        priority=3,
        status=MessageStatus.QUEUED,
        test=False,
        pinned_device_id=None,
        sim_slot=None,
        segments=1,
        encoding="GSM-7",
        attempts=0,
        reroutes=0,
        scheduled_at=None,
        due_at=NOW,
        expires_at=NOW + ttl,
        created_at=NOW,
        queued_at=NOW,
        meta=None,
        webhook_url=None,
        request_id="req-1",
        held_until=None,
        hold_reason=None,
    )
    variants: list[dict[str, Any]] = [
        {},
        {"test": True, "priority": 1, "request_id": None},
        {
            "batch_id": "batch_x",
            "to": "+33612345678",
            "body": "Ünïcödé ✓ — a longer text, " * 4,
            "segments": 2,
            "encoding": "UCS-2",
            "meta": {"order": 42, "note": 'é\n"quoted"', "nested": {"a": [1, 2.5, None]}},
            "webhook_url": "https://example.com/hook?a=1",
            "sim_slot": 1,
        },
        {
            "scheduled_at": scheduled,
            "due_at": scheduled,
            "expires_at": scheduled + ttl,
            "pinned_device_id": "device_rows",
            "meta": {},
        },
        {
            "due_at": hold,
            "expires_at": hold + ttl,
            "held_until": hold,
            "hold_reason": "quiet_hours",
            # The same instant written in another zone: stored as the same UTC text.
            "created_at": NOW.astimezone(HARARE),
            "queued_at": NOW.astimezone(HARARE),
        },
    ]
    return [
        QueuedMessage(id=f"msg_{i}", **{**base, **variant}) for i, variant in enumerate(variants)
    ]


def _stored(db: Database, prefix: str) -> dict[str, list[Any]]:
    """Every column of the messages whose id starts with `prefix`, as the database holds it
    (the id without its prefix)."""
    columns = [column.name for column in table_of(Message).columns]
    if db.dialect == "sqlite":
        shown = ", ".join(f'quote("{name}")' for name in columns)
    else:
        shown = ", ".join(f'"{name}"::text' for name in columns)
    with db.session() as session:
        rows = session.execute(
            text(f"SELECT m.id, {shown} FROM messages AS m WHERE m.id LIKE :p ORDER BY m.id"),
            {"p": prefix + "%"},
        ).all()
    out: dict[str, list[Any]] = {}
    for key, *values in rows:
        named = dict(zip(columns, values, strict=True))
        del named["id"]  # differs by its prefix
        out[key.removeprefix(prefix)] = list(named.items())
    return out


def _seed(db: Database) -> None:
    with db.write() as session:
        session.add(Client(id="client_rows", name="rows"))
        session.flush()
        session.add(Device(id="device_rows", client_id="client_rows", name="p", password_hash="h"))


def test_rows_inserted_as_tuples_are_the_rows_the_orm_writes(db: Database) -> None:
    _seed(db)
    rows = _rows()
    with db.write() as session:
        _INSERT.execute(session.connection(), [row._replace(id="a" + row.id) for row in rows])
    with db.write() as session:
        session.add_all(Message(**row._replace(id="b" + row.id)._asdict()) for row in rows)
    fast, orm = _stored(db, "a"), _stored(db, "b")
    assert len(fast) == len(rows)
    assert fast == orm
    if db.dialect == "sqlite":
        # What the format is, not only that both agree: UTC text with 6 digits.
        created = dict(fast["msg_4"])["created_at"]
        assert created == "'2026-12-05 20:56:19.168553'"
        assert dict(fast["msg_3"])["scheduled_at"] == "'2026-12-20 07:00:00.000000'"


def test_one_row_and_the_columns_left_out_are_as_the_orm_leaves_them(db: Database) -> None:
    """A single row goes through `execute`, not executemany; the columns a new message
    does not set (device_id, sent_at, …) are NULL either way."""
    _seed(db)
    row = _rows()[2]
    with db.write() as session:
        _INSERT.execute(session.connection(), [row._replace(id="a" + row.id)])
    with db.write() as session:
        session.add(Message(**row._replace(id="b" + row.id)._asdict()))
    fast, orm = _stored(db, "a"), _stored(db, "b")
    assert fast == orm
    left_out = {name for name in dict(fast["msg_2"]) if name not in QueuedMessage._fields}
    assert left_out >= {"device_id", "sent_at", "sealed_body", "error_code"}
    null = "NULL" if db.dialect == "sqlite" else None
    assert all(dict(fast["msg_2"])[name] == null for name in left_out)


def test_a_naive_datetime_is_refused_as_the_orm_refuses_it(db: Database) -> None:
    _seed(db)
    row = _rows()[0]._replace(due_at=NOW.replace(tzinfo=None))
    with pytest.raises(Exception, match="naive datetime"), db.write() as session:
        _INSERT.execute(session.connection(), [row])
