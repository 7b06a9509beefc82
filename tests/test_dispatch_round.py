"""The dispatch round's database side (`devicelink.assignment.claim_round`): what its first read
must still find now that it probes each client instead of reading every due message, and its
turn on SQLite's write lock while the process's other writers keep it busy.

Why these: the round's first read used to list every due message of its clients (it grew with
the backlog); it is now an existence probe per client, plus the pinned phones of a client only
once nothing unpinned is left for it. Pinned work must still reach its phone in the same round,
and unpinned work behind many messages pinned elsewhere must still be found. The round writes
with `Database.write(urgent=True)`: under a stream of other writes (accept batches, report
batches) it must get the lock next, not wait for a gap that never comes.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import insert, text
from sqlmodel import Session

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.devicelink.assignment import ClaimRequest, claim_round
from zimsend.server.storage import Database, Message, utcnow
from zimsend.server.storage.tables import table_of

PEPPER = b"dispatch-round-test-pepper-01234"
#: How long each of the stream's transactions holds the write lock.
HOLD_S = 0.02
#: Transactions each writer of the stream runs at most.
STREAM_WRITES = 2000


def _phones(db: Database, count: int) -> tuple[str, list[str]]:
    client = accounts.create_client(db, "round")
    return client.id, [
        accounts.create_device(db, PEPPER, client.id, f"p{n}", server_address="x:1").device.id
        for n in range(count)
    ]


def _queue(db: Database, client_id: str, count: int = 1, **fields: Any) -> list[str]:
    """`count` due messages, oldest first (one microsecond apart)."""
    now = utcnow() - dt.timedelta(seconds=1)
    rows = [
        {
            "id": credentials.new_id("msg"),
            "client_id": client_id,
            "to": "+33612345678",
            "body": "hi",
            "segments": 1,
            "encoding": "GSM-7",
            "priority": 3,
            "status": "queued",
            "test": False,
            "due_at": now + dt.timedelta(microseconds=n),
            "expires_at": now + dt.timedelta(hours=24),
            "created_at": now,
            "queued_at": now,
            **fields,
        }
        for n in range(count)
    ]
    with db.write() as session:
        session.execute(insert(table_of(Message)), rows)
    return [row["id"] for row in rows]


def _handed(result: Any) -> dict[str, list[str]]:
    return {
        device: [c.message_id for c in commands] for device, commands in result.commands.items()
    }


def test_a_phone_after_the_client_ran_dry_still_gets_the_message_pinned_to_it(
    db: Database,
) -> None:
    client_id, (first, second, third) = _phones(db, 3)
    (free,) = _queue(db, client_id)
    (pinned,) = _queue(db, client_id, pinned_device_id=third)
    requests = [ClaimRequest(client_id, device, 5) for device in (first, second, third)]
    result = claim_round(db, PEPPER, requests, utcnow(), scan=None)
    assert _handed(result) == {first: [free], third: [pinned]}


def test_unpinned_work_behind_many_messages_pinned_to_an_absent_phone_is_found(
    db: Database,
) -> None:
    client_id, (present, absent) = _phones(db, 2)
    _queue(db, client_id, 300, pinned_device_id=absent, priority=1)
    (free,) = _queue(db, client_id)
    result = claim_round(db, PEPPER, [ClaimRequest(client_id, present, 5)], utcnow(), scan=None)
    assert _handed(result) == {present: [free]}


def test_a_round_names_the_phones_whose_pinned_work_waits_when_nothing_else_is_due(
    db: Database,
) -> None:
    client_id, (looked_at, elsewhere) = _phones(db, 2)
    _queue(db, client_id, 2, pinned_device_id=elsewhere)
    result = claim_round(db, PEPPER, [ClaimRequest(client_id, looked_at, 5)], utcnow(), scan=None)
    assert result.commands == {}
    assert result.pinned == {elsewhere}  # the dispatcher makes that idle phone ready


def test_a_round_in_priority_order_takes_all_it_may_from_a_long_queue(db: Database) -> None:
    client_id, (phone,) = _phones(db, 1)
    normal = _queue(db, client_id, 50)
    urgent = _queue(db, client_id, 3, priority=1)
    result = claim_round(db, PEPPER, [ClaimRequest(client_id, phone, 10)], utcnow(), scan=None)
    assert _handed(result) == {phone: urgent + normal[:7]}


class _Recording(Database):
    """A Database that logs when each write asks for SQLite's lock and when it holds it."""

    log: list[tuple[str, bool]]

    @contextmanager
    def write(self, *, urgent: bool = False) -> Iterator[Session]:
        self.log.append(("asks", urgent))
        with super().write(urgent=urgent) as session:
            self.log.append(("holds", urgent))
            yield session


def test_a_dispatch_round_is_not_starved_by_a_stream_of_other_writes(sqlite_url: str) -> None:
    """Four threads write back to back (the accept lane, report batches and heartbeat
    flushes of a busy server; each transaction holds the lock 20 ms), so the lock always has
    writers waiting; each dispatch round must hold it right after the writer
    holding it when it asked, not after the writers that came later."""
    db = _Recording.from_url(sqlite_url)
    db.log = []
    db.migrate()
    client_id, (phone,) = _phones(db, 1)
    rounds = 30
    queued = _queue(db, client_id, rounds)
    stop = threading.Event()

    def stream(n: int) -> None:
        for _ in range(STREAM_WRITES):  # bounded: a starved round fails instead of hanging
            if stop.is_set():
                return
            with db.write() as session:
                session.execute(
                    text("UPDATE clients SET name = :n WHERE id = :id"),
                    {"n": f"writer {n}", "id": client_id},
                )
                stop.wait(HOLD_S)  # a batch's work, the GIL released as SQLite does

    writers = [threading.Thread(target=stream, args=(n,)) for n in range(4)]
    for thread in writers:
        thread.start()
    try:
        for message_id in queued:  # one message per round, in order
            result = claim_round(
                db, PEPPER, [ClaimRequest(client_id, phone, 1)], utcnow(), scan=None
            )
            assert _handed(result) == {phone: [message_id]}
        assert all(thread.is_alive() for thread in writers)  # the stream ran throughout
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=30)
    log = list(db.log)
    asked = [i for i, entry in enumerate(log) if entry == ("asks", True)]
    assert len(asked) == rounds
    for start in asked:
        held = log.index(("holds", True), start)
        others = [e for e in log[start:held] if e == ("holds", False)]
        # The writer holding the lock goes first (it may log its hold just after the round
        # asked); one more only if this thread was descheduled for a whole transaction
        # between asking and queueing. Without the round's priority the stream's writers
        # keep the lock among themselves (each takes it again as it lets it go) and the
        # round waits until the stream ends.
        assert len(others) <= 2, log[start : held + 1]
    db.dispose()
