"""Wake-ups across processes on PostgreSQL (issue 17): what one process commits, another hears
at once through LISTEN/NOTIFY (migration 0008's triggers, `storage.wakeups.Listener`).

The listener and the writer use two separate `Database`s, as two replicas would; the database
is a real PostgreSQL. On SQLite nothing listens (one writer; wake-ups stay in-process).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import queue
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import trio
from _devices import wait_for
from conftest import TEST_PEPPER

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.config import Settings
from zimsend.server.storage import Database, Message, OutboxEvent, utcnow
from zimsend.server.storage.wakeups import (
    OUTBOX_CHANNEL,
    WORK_CHANNEL,
    Listener,
    listen_in_loop,
)
from zimsend.server.webhook_delivery.events import outbox_event
from zimsend.server.worker import Worker, WorkerOptions

HEARD_WITHIN_S = 10.0  # a sanity bound on a loaded machine; typically a few milliseconds


@pytest.fixture
def pg(postgres_database_url: str) -> Iterator[Database]:
    db = Database.from_url(postgres_database_url)
    db.migrate()
    yield db
    db.dispose()


def _listen(
    db: Database, reconnects: list[int] | None = None
) -> tuple[Listener, queue.Queue[tuple[str, str]]]:
    heard: queue.Queue[tuple[str, str]] = queue.Queue()
    listener = Listener.for_database(
        db,
        {
            WORK_CHANNEL: lambda p: heard.put((WORK_CHANNEL, p)),
            OUTBOX_CHANNEL: lambda p: heard.put((OUTBOX_CHANNEL, p)),
        },
        on_reconnect=(lambda: reconnects.append(1)) if reconnects is not None else None,
    )
    assert listener is not None
    assert listener.connected.wait(HEARD_WITHIN_S)
    return listener, heard


def _queue_message(db: Database, client_id: str, due_at: dt.datetime) -> str:
    with db.write() as session:
        message = Message(
            id=credentials.new_id("msg"),
            client_id=client_id,
            to="+33612345678",
            body="hi",
            segments=1,
            due_at=due_at,
            expires_at=due_at + dt.timedelta(hours=24),
        )
        session.add(message)
    return message.id


def test_a_committed_message_wakes_another_process_and_a_rollback_does_not(
    pg: Database, postgres_database_url: str
) -> None:
    writer = Database.from_url(postgres_database_url)  # another replica
    listener, heard = _listen(pg)
    try:
        client = accounts.create_client(writer, "wakeups")
        # Rolled back: nobody is woken for rows nobody can see.
        with writer.session() as session, session.begin():
            session.add(
                Message(
                    id=credentials.new_id("msg"),
                    client_id=client.id,
                    to="+1",
                    body="x",
                    segments=1,
                    due_at=utcnow(),
                    expires_at=utcnow() + dt.timedelta(hours=1),
                )
            )
            session.flush()
            session.rollback()
        # Due far in the future: the dispatchers' periodic scan finds it, no wake-up.
        _queue_message(writer, client.id, utcnow() + dt.timedelta(hours=1))
        _queue_message(writer, client.id, utcnow())
        assert heard.get(timeout=HEARD_WITHIN_S) == (WORK_CHANNEL, client.id)
        with pytest.raises(queue.Empty):
            heard.get(timeout=0.5)
    finally:
        listener.stop()
        writer.dispose()


def test_outbox_events_wake_the_workers_once_per_transaction(
    pg: Database, postgres_database_url: str
) -> None:
    writer = Database.from_url(postgres_database_url)
    listener, heard = _listen(pg)
    try:
        client = accounts.create_client(writer, "outbox")
        with writer.write() as session:
            for n in range(5):
                session.add(outbox_event(client_id=client.id, event_type="sms.sent", data={"n": n}))
        assert heard.get(timeout=HEARD_WITHIN_S) == (OUTBOX_CHANNEL, "")
        with pytest.raises(queue.Empty):
            heard.get(timeout=0.5)
    finally:
        listener.stop()
        writer.dispose()


def test_the_listener_reconnects_and_says_so(pg: Database, postgres_database_url: str) -> None:
    """A lost connection (PostgreSQL restarted, network cut): the listener comes back on its
    own and calls `on_reconnect` (what was sent meanwhile is lost), then hears again."""
    reconnects: list[int] = []
    listener, heard = _listen(pg, reconnects)
    try:
        admin_url = pg.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'zimsend-listener' AND datname = "
                "current_database()"
            )
        wait_for(lambda: reconnects, HEARD_WITHIN_S + 10, "the listener to reconnect")
        client = accounts.create_client(pg, "again")
        _queue_message(pg, client.id, utcnow())
        assert heard.get(timeout=HEARD_WITHIN_S) == (WORK_CHANNEL, client.id)
    finally:
        listener.stop()


def test_a_worker_hears_new_events_long_before_its_poll(
    pg: Database, postgres_database_url: str, tmp_path: Path
) -> None:
    """A worker polling once a minute still takes an event written by another process at once:
    the insert's NOTIFY wakes it (the event has no subscriber, so no POST is needed to end it)."""
    writer = Database.from_url(postgres_database_url)
    client = accounts.create_client(writer, "worker-wakeup")
    settings = Settings(
        data_dir=tmp_path, secret_pepper=TEST_PEPPER, database_url=postgres_database_url
    )

    def write_event() -> str:
        with writer.write() as session:
            event = outbox_event(client_id=client.id, event_type="sms.sent", data={"n": 1})
            session.add(event)
        return event.id

    def status(event_id: str) -> str:
        with writer.session() as session:
            row = session.get(OutboxEvent, event_id)
            return row.status if row is not None else "missing"

    async def main() -> str:
        worker = Worker(settings, pg, WorkerOptions(poll_interval=60.0))
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            with trio.fail_after(HEARD_WITHIN_S):
                while not worker.notified:  # noqa: ASYNC110 - set by the listener's thread
                    await trio.sleep(0.05)
            await trio.sleep(0.5)  # its first cycle found nothing: it now waits (60 s poll)
            event_id = await trio.to_thread.run_sync(write_event)
            with trio.fail_after(HEARD_WITHIN_S * 2):
                while await trio.to_thread.run_sync(status, event_id) == "pending":  # noqa: ASYNC110 - another process writes it
                    await trio.sleep(0.05)
            worker.stop()
        return await trio.to_thread.run_sync(status, event_id)

    try:
        assert trio.run(main) == "delivered"
    finally:
        writer.dispose()


def test_the_servers_listener_runs_in_its_event_loop(
    pg: Database, postgres_database_url: str
) -> None:
    """The asyncio server listens in its loop (`listen_in_loop`): a commit elsewhere calls the
    callback in the loop; cancelling the task ends it."""
    writer = Database.from_url(postgres_database_url)
    client = accounts.create_client(writer, "in-loop")

    async def main() -> str:
        heard: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(listen_in_loop(pg, {WORK_CHANNEL: heard.put_nowait}))
        try:
            async with asyncio.timeout(HEARD_WITHIN_S):
                while True:  # until it listens: a new message now and then
                    await asyncio.to_thread(_queue_message, writer, client.id, utcnow())
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(heard.get(), 0.3)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        assert asyncio.run(main()) == client.id
    finally:
        writer.dispose()


def test_the_servers_listener_skips_its_own_commits(
    pg: Database, postgres_database_url: str
) -> None:
    """A replica wakes its own dispatcher in-process when it queues work: its listener skips
    the NOTIFY of its own commit (by the notifying backend's pid) and still hears the others'."""
    writer = Database.from_url(postgres_database_url)  # another replica
    mine = accounts.create_client(pg, "own-commit")
    theirs = accounts.create_client(writer, "their-commit")

    async def main() -> list[str]:
        heard: asyncio.Queue[str] = asyncio.Queue()
        task = asyncio.create_task(listen_in_loop(pg, {WORK_CHANNEL: heard.put_nowait}))
        try:
            async with asyncio.timeout(HEARD_WITHIN_S):
                while True:  # until it listens: the other replica's message now and then
                    await asyncio.to_thread(_queue_message, writer, theirs.id, utcnow())
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(heard.get(), 0.3)
                        break
            await asyncio.to_thread(_queue_message, pg, mine.id, utcnow())  # its own commit
            marker = await asyncio.to_thread(_queue_message, writer, theirs.id, utcnow())
            assert marker
            # Notifications arrive in commit order: all that was heard up to the other
            # replica's later commit.
            got: list[str] = []
            async with asyncio.timeout(HEARD_WITHIN_S):
                while len(got) < 1 or got[-1] != theirs.id or not heard.empty():
                    got.append(await heard.get())
                    if got[-1] == theirs.id and heard.empty():
                        await asyncio.sleep(0.3)  # a late own NOTIFY would show up now
            return got
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        got = asyncio.run(main())
        assert theirs.id in got
        assert mine.id not in got
        assert pg.backend_pids  # its pooled connections are known
        assert writer.backend_pids
        writer.dispose()
        assert not writer.backend_pids  # closed connections are forgotten (pids get reused)
    finally:
        writer.dispose()


def test_nothing_listens_on_sqlite(tmp_path: Path) -> None:
    db = Database.from_url(f"sqlite:///{tmp_path / 'z.db'}")
    try:
        assert Listener.for_database(db, {WORK_CHANNEL: lambda _p: None}) is None
        asyncio.run(listen_in_loop(db, {WORK_CHANNEL: lambda _p: None}))  # returns at once
    finally:
        db.dispose()
