"""Report batches of every size run a few SQL texts, not one per size (`storage.shapes`).

Each connection keeps every SQL text it runs as a prepared statement (Python's sqlite3: the
last 128 per connection; psycopg: 100), and the report batch's statements cost SQLite 17 KiB
and more each. With one text per batch size the server's memory crept up in the soak
(docs/benchmarks.md). Here batches of 1 to 24 reports are applied through the real
`apply_part_reports` on both engines; the texts of its batch statements are counted, and what
the padding must not change is checked: every report applied once, one transition each.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import col, select

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.devicelink.transitions import PartReport, apply_part_reports
from zimsend.server.storage import Database, Message, claim_due_messages, utcnow
from zimsend.server.storage.shapes import padded, padded_chunks
from zimsend.server.storage.upserts import mark_reports_processed

PEPPER = b"statement-shapes-test-pepper-012"
SIZES = range(1, 25)
#: The statements a report batch runs whose text depends on the batch's size.
BATCH_TABLES = ("FROM messages", "FROM message_parts", "INSERT INTO processed_reports")


def test_padded_repeats_the_last_item_up_to_a_power_of_two() -> None:
    assert padded([]) == []
    assert padded(["a"]) == ["a"]
    assert padded(["a", "b", "c"]) == ["a", "b", "c", "c"]
    assert len(padded(list(range(17)))) == 32
    assert [len(c) for c in padded_chunks(list(range(600)), 256)] == [256, 256, 128]
    with pytest.raises(ValueError, match="power of two"):
        list(padded_chunks([1], 100))


def _messages(db: Database, count: int) -> tuple[str, str, list[str]]:
    client = accounts.create_client(db, "shapes")
    device = accounts.create_device(db, PEPPER, client.id, "p", server_address="x:1").device
    now = utcnow()
    with db.write() as session:
        ids = []
        for n in range(count):
            message = Message(
                id=credentials.new_id("msg"),
                client_id=client.id,
                to="+33612345678",
                body=f"hi {n}",
                segments=1,
                due_at=now,
                expires_at=now + dt.timedelta(hours=24),
            )
            session.add(message)
            ids.append(message.id)
    with db.write() as session:
        claimed = claim_due_messages(
            session, client_id=client.id, device_id=device.id, limit=count, now=now
        )
        assert len(claimed) == count
    return client.id, device.id, ids


def test_report_batches_of_every_size_share_a_few_statements(db: Database) -> None:
    client_id, device_id, ids = _messages(db, sum(SIZES))
    texts: dict[str, set[str]] = {table: set() for table in BATCH_TABLES}

    def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        for table in BATCH_TABLES:
            if table in statement:
                texts[table].add(statement)

    event.listen(db.engine, "before_cursor_execute", seen)
    transitions = 0
    try:
        start = 0
        for size in SIZES:
            batch = ids[start : start + size]
            start += size
            reports = [
                (
                    client_id,
                    device_id,
                    PartReport(
                        report_id=f"r-{mid}",
                        message_id=mid,
                        outcome="sent",
                        part_index=0,
                        part_count=1,
                        error_code="",
                        error_message="",
                    ),
                )
                for mid in batch
            ]
            with db.write() as session:
                moves = apply_part_reports(session, reports, now=utcnow())
            assert sorted(t.message_id for t in moves) == sorted(batch)
            transitions += len(moves)
    finally:
        event.remove(db.engine, "before_cursor_execute", seen)

    assert transitions == sum(SIZES)
    # One text per power of two up to 32 (1, 2, 4, 8, 16, 32); unpadded it was one per size.
    for table, statements in texts.items():
        assert 1 <= len(statements) <= 6, (table, len(statements))
    with db.session() as session:
        chosen = select(Message).where(col(Message.id).in_(ids))
        statuses = {m.status for m in session.exec(chosen)}
    assert statuses == {"sent"}


def test_a_padded_mark_records_each_report_once(db: Database) -> None:
    """The repeated rows of a padded INSERT … ON CONFLICT DO NOTHING RETURNING are skipped,
    and a report seen before is still told apart (both engines)."""
    client = accounts.create_client(db, "marks")
    d = accounts.create_device(db, PEPPER, client.id, "p", server_address="x:1").device.id
    with db.write() as session:
        first = mark_reports_processed(session, [(d, "a"), (d, "b"), (d, "c")])
    assert first == {(d, "a"), (d, "b"), (d, "c")}
    with db.write() as session:
        second = mark_reports_processed(session, [(d, "c"), (d, "d"), (d, "e"), (d, "d")])
    assert second == {(d, "d"), (d, "e")}
