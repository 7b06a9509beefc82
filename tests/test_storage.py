"""Storage: migrations, column types, constraints, and the atomic primitives, on SQLite and
PostgreSQL alike."""

from __future__ import annotations

import datetime as dt
import glob
import shutil
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc, func, inspect, select, text
from sqlalchemy.sql.elements import ClauseElement
from sqlmodel import col

from zimsend.server.accounts.credentials import new_id
from zimsend.server.storage import (
    ApiKey,
    ClaimedMessage,
    Client,
    Database,
    Device,
    IdempotencyRecord,
    Message,
    MessageStatus,
    claim_due_messages,
    claims,
    count_in_window,
    database,
    get_for_client,
    mark_report_processed,
    normalize_url,
    schema,
    utcnow,
)

NOW = dt.datetime(2025, 1, 15, 10, 30, tzinfo=dt.UTC)


def seed_client(db: Database, client_id: str = "client_a", devices: int = 1) -> list[str]:
    """A client with `devices` devices; returns the device ids."""
    ids = [f"device_{client_id}_{i}" for i in range(devices)]
    with db.write() as s:
        s.add(Client(id=client_id, name=client_id))
        s.flush()
        s.add_all(Device(id=d, client_id=client_id, name=d, password_hash="h") for d in ids)
    return ids


def queue(db: Database, client_id: str, count: int, **fields: Any) -> list[str]:
    """`count` queued messages, due one second apart ending at NOW; returns their ids."""
    ids = [new_id("msg") for _ in range(count)]
    with db.write() as s:
        for i, mid in enumerate(ids):
            values: dict[str, Any] = {"due_at": NOW - dt.timedelta(seconds=count - i)}
            values.update(fields)
            s.add(Message(id=mid, client_id=client_id, to="+33612345678", body="hi", **values))
    return ids


# --- Migrations -----------------------------------------------------------------------------


def test_migrations_reach_head_and_match_the_models(database_url: str) -> None:
    db = Database.from_url(database_url)
    try:
        db.migrate()
        db.migrate()  # the second run finds the schema at head and does nothing
        with db.engine.connect() as conn:
            assert schema.schema_diff(conn) == []
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert version == schema.head_revision()
        assert "messages" in inspect(db.engine).get_table_names()
    finally:
        db.dispose()


def test_two_processes_migrating_at_once_both_succeed(database_url: str) -> None:
    databases = [Database.from_url(database_url) for _ in range(2)]
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda d: d.migrate(), databases))
        with databases[0].engine.connect() as conn:
            assert schema.schema_diff(conn) == []
    finally:
        for d in databases:
            d.dispose()


def test_downgrade_to_base_removes_every_table(database_url: str) -> None:
    from alembic import command

    db = Database.from_url(database_url)
    try:
        db.migrate()
        with db.engine.begin() as conn:
            command.downgrade(schema.alembic_config(conn), "base")
        assert set(inspect(db.engine).get_table_names()) <= {"alembic_version"}
        db.migrate()
    finally:
        db.dispose()


def test_migrations_ship_inside_the_package() -> None:
    assert (schema.MIGRATIONS_DIR / "env.py").is_file()
    assert schema.MIGRATIONS_DIR.parent.name == "storage"
    assert list((schema.MIGRATIONS_DIR / "versions").glob("0001_*.py"))


def test_missing_postgres_binaries_fail_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from zimsend.server import local_postgres

    monkeypatch.delenv("ZIMSEND_PG_BINDIR", raising=False)
    monkeypatch.setattr(shutil, "which", lambda _: None)  # what local_postgres looks up
    monkeypatch.setattr(glob, "glob", lambda _: [])
    with pytest.raises(local_postgres.PostgresNotInstalled, match="apt-get install postgresql-15"):
        local_postgres.find_bindir()


@pytest.mark.parametrize(
    "url",
    ["postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"],
)
def test_postgres_urls_use_psycopg_3(url: str) -> None:
    assert normalize_url(url).drivername == "postgresql+psycopg"


def test_an_in_memory_sqlite_database_is_shared_by_threads() -> None:
    db = Database.from_url("sqlite://")
    db.migrate()
    seed_client(db)
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(lambda: db.session().__enter__().get(Client, "client_a")).result()
    db.dispose()


# --- Types and constraints ------------------------------------------------------------------


def test_message_round_trips_aware_datetimes_and_json_metadata(db: Database) -> None:
    seed_client(db)
    paris = dt.timezone(dt.timedelta(hours=2))
    scheduled = dt.datetime(2025, 6, 1, 12, 0, 0, 123456, tzinfo=paris)
    meta = {"order": 42, "tags": ["a", "é", "🙂"], "nested": {"ok": True, "none": None}}
    with db.write() as s:
        s.add(
            Message(
                id="msg_1", client_id="client_a", to="+33612345678", body="Bonjour 🙂",
                priority=1, scheduled_at=scheduled, due_at=scheduled, meta=meta,
            )
        )  # fmt: skip
    with db.session() as s:
        m = s.get(Message, "msg_1")
        assert m is not None
        assert m.scheduled_at == scheduled
        assert m.scheduled_at.utcoffset() == dt.timedelta(0)  # returned in UTC
        assert m.created_at.tzinfo is not None
        assert m.meta == meta
        assert m.body == "Bonjour 🙂"
        assert m.status == MessageStatus.QUEUED
        assert m.sent_at is None


def test_naive_datetimes_are_refused(db: Database) -> None:
    seed_client(db)
    naive = dt.datetime(2025, 1, 1, 12, 0)
    with pytest.raises(exc.StatementError, match="naive datetime"), db.write() as s:
        s.add(Message(id="msg_1", client_id="client_a", to="+1", body="x", due_at=naive))


def test_priority_outside_1_to_5_is_refused(db: Database) -> None:
    seed_client(db)
    with pytest.raises(exc.IntegrityError), db.write() as s:
        s.add(Message(id="m", client_id="client_a", to="+1", body="x", due_at=NOW, priority=9))


def test_api_key_hashes_are_unique(db: Database) -> None:
    seed_client(db)

    def key(key_id: str) -> ApiKey:
        return ApiKey(id=key_id, client_id="client_a", name="k", key_hash="same", last4="abcd")

    with db.write() as s:
        s.add(key("key_1"))
    with pytest.raises(exc.IntegrityError), db.write() as s:
        s.add(key("key_2"))


def test_an_idempotency_key_is_unique_per_client_only(db: Database) -> None:
    seed_client(db, "client_a")
    seed_client(db, "client_b")

    def record(client_id: str) -> IdempotencyRecord:
        return IdempotencyRecord(
            client_id=client_id, key="k1", operation="SendSms", request_hash="h", response={}
        )

    with db.write() as s:
        s.add_all([record("client_a"), record("client_b")])
    with pytest.raises(exc.IntegrityError), db.write() as s:
        s.add(record("client_a"))


def test_another_clients_row_looks_missing(db: Database) -> None:
    seed_client(db, "client_a")
    seed_client(db, "client_b")
    (mid,) = queue(db, "client_a", 1)
    with db.session() as s:
        assert get_for_client(s, Message, mid, "client_a") is not None
        assert get_for_client(s, Message, mid, "client_b") is None
        assert get_for_client(s, Message, "msg_missing", "client_a") is None


# --- Claims ---------------------------------------------------------------------------------


def claim(
    db: Database, device: str, limit: int, client: str = "client_a", **kw: Any
) -> list[ClaimedMessage]:
    with db.write() as s:
        return claim_due_messages(s, client_id=client, device_id=device, limit=limit, now=NOW, **kw)


def test_claims_take_highest_priority_then_oldest(db: Database) -> None:
    (device,) = seed_client(db)
    low = queue(db, "client_a", 3, priority=5)
    urgent = queue(db, "client_a", 2, priority=1)
    normal = queue(db, "client_a", 2, priority=3)
    claimed = claim(db, device, 6)
    assert [m.id for m in claimed] == urgent + normal + low[:2]
    assert all(m.status == "processing" and m.device_id == device for m in claimed)
    assert all(m.processing_at == NOW for m in claimed)
    assert [m.id for m in claim(db, device, 10)] == low[2:]
    assert claim(db, device, 10) == []


def test_claims_skip_what_is_not_due_for_this_device(db: Database) -> None:
    device, other_device = seed_client(db, devices=2)
    seed_client(db, "client_b")
    queue(db, "client_a", 1, due_at=NOW + dt.timedelta(seconds=1))  # scheduled later
    queue(db, "client_a", 1, expires_at=NOW)  # expired
    queue(db, "client_a", 1, pinned_device_id=other_device)
    queue(db, "client_a", 1, test=True)  # sandbox: for the simulated device only
    queue(db, "client_a", 1, status="cancelled")
    queue(db, "client_b", 1)  # another client's
    mine = queue(db, "client_a", 1, pinned_device_id=device, expires_at=NOW + dt.timedelta(1))
    assert [m.id for m in claim(db, device, 10)] == mine
    assert len(claim(db, other_device, 10, test=True)) == 1


def test_a_bulk_sharing_one_due_time_leaves_in_the_order_it_was_queued(db: Database) -> None:
    """A bulk send queues its messages with one due time. Claims take them in the order they
    were queued, and read them in index order: on SQLite, ordering ties by `id` (random) made
    every claim sort all the bulk's messages (5x the CPU per message with 6,000)."""
    (device,) = seed_client(db)
    due = NOW - dt.timedelta(minutes=1)
    ids = [new_id("msg") for _ in range(40)]
    with db.write() as s:
        for mid in ids:
            s.add(Message(id=mid, client_id="client_a", to="+33612345678", body="hi", due_at=due))
    batches = [{m.id for m in claim(db, device, 8)} for _ in range(5)]
    assert batches == [set(ids[i : i + 8]) for i in range(0, 40, 8)]
    if db.engine.dialect.name == "sqlite":
        claim_due = claims._SHAPES[(False, False)][0]
        assert isinstance(claim_due, ClauseElement)
        with db.session() as s:
            compiled = claim_due.compile(dialect=db.engine.dialect)
            plan = s.connection().exec_driver_sql(
                f"EXPLAIN QUERY PLAN {compiled}", tuple(_claim_params(compiled, device))
            )
            steps = " / ".join(str(row[-1]) for row in plan)
        assert "ix_messages_dispatch" in steps
        assert "TEMP B-TREE" not in steps, steps


def _claim_params(compiled: Any, device: str) -> list[Any]:
    values = {"c_client_id": "client_a", "c_device_id": device, "c_now": NOW, "c_limit": 8}
    return [values.get(name, 1) for name in compiled.positiontup]


def test_concurrent_claims_never_take_the_same_message(db: Database) -> None:
    devices = seed_client(db, devices=4)
    ids = queue(db, "client_a", 300)

    def drain(device: str) -> list[str]:
        taken: list[str] = []
        while batch := claim(db, device, 7):
            taken += [m.id for m in batch]
        return taken

    with ThreadPoolExecutor(len(devices)) as pool:
        results = list(pool.map(drain, devices))
    everything = [mid for taken in results for mid in taken]
    assert sorted(everything) == sorted(ids)  # each message exactly once
    with db.session() as s:
        owners = dict(s.execute(select(col(Message.id), col(Message.device_id))).all())
    for device, taken in zip(devices, results, strict=True):
        assert all(owners[mid] == device for mid in taken)


@pytest.mark.postgres
def test_postgres_claims_skip_rows_locked_by_an_open_claim(postgres_database_url: str) -> None:
    db = Database.from_url(postgres_database_url)
    try:
        db.migrate()
        first_device, second_device = seed_client(db, devices=2)
        ids = queue(db, "client_a", 4)
        holding, release = threading.Event(), threading.Event()

        def slow_claim() -> list[str]:
            with db.write() as s:
                taken = claim_due_messages(
                    s, client_id="client_a", device_id=first_device, limit=2, now=NOW
                )
                holding.set()
                release.wait(10)
                return [m.id for m in taken]

        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(slow_claim)
            assert holding.wait(10)
            second = [m.id for m in claim(db, second_device, 10)]  # does not wait
            release.set()
        assert first.result() == ids[:2]
        assert second == ids[2:]
    finally:
        db.dispose()


# --- SQLite write transactions --------------------------------------------------------------


def test_sqlite_writers_wait_for_each_other_instead_of_failing(sqlite_url: str) -> None:
    db = Database.from_url(sqlite_url)
    db.migrate()
    seed_client(db)
    queue(db, "client_a", 1)
    first_inside, counter = threading.Event(), {"n": 0}

    def read_then_write(hold: float) -> None:
        # Read first, then write: without BEGIN IMMEDIATE the second writer would fail at
        # once with "database is locked" when it tries to upgrade its read transaction.
        with db.write() as s:
            n = s.scalar(select(func.count()).select_from(Message))
            first_inside.set()
            threading.Event().wait(hold)
            s.execute(text("UPDATE messages SET attempts = attempts + :n"), {"n": n})
            counter["n"] += 1

    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(read_then_write, 0.3)
        first_inside.wait(5)
        b = pool.submit(read_then_write, 0)
        a.result(), b.result()
    with db.session() as s:
        assert s.scalar(select(col(Message.attempts))) == 2
    db.dispose()


def test_an_urgent_sqlite_writer_goes_before_the_writers_already_waiting(sqlite_url: str) -> None:
    """The dispatch round writes with `urgent=True`: while one writer holds the lock and others
    queue behind it, the urgent one is next, and every writer still gets its turn."""
    db = Database.from_url(sqlite_url)
    db.migrate()
    seed_client(db)
    holding, release = threading.Event(), threading.Event()
    order: list[str] = []

    def write(name: str, urgent: bool = False) -> None:
        with db.write(urgent=urgent) as s:
            s.execute(text("UPDATE clients SET name = :n"), {"n": name})
            order.append(name)
            if name == "first":
                holding.set()
                release.wait(10)

    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(write, "first")
        assert holding.wait(10)
        waiting = [pool.submit(write, f"normal {n}") for n in range(2)]
        threading.Event().wait(0.3)  # both queued behind `first`
        urgent = pool.submit(write, "urgent", True)
        threading.Event().wait(0.3)
        release.set()
        for future in (first, *waiting, urgent):
            future.result(timeout=30)
    assert order[:2] == ["first", "urgent"], order
    assert sorted(order[2:]) == ["normal 0", "normal 1"]
    with db.write(urgent=True) as s, db.write() as inner:  # re-entrant in one thread
        assert s is not inner
    db.dispose()


def test_a_sqlite_writer_outwaits_another_process_past_its_polling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer of this process tries `BEGIN IMMEDIATE` every fraction of a millisecond while
    another process (the worker) holds the write lock; held longer than it polls, SQLite's
    busy handler takes over and the write still commits. Its connection keeps its busy
    timeout for everything else."""
    monkeypatch.setattr(database, "POLL_S", 0.2)
    path = tmp_path / "zimsend.db"
    db = Database.from_url(f"sqlite:///{path}")
    db.migrate()
    for hold in (0.05, 0.6):  # ends while it polls; ends after
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(hold, lambda o=other: (o.execute("COMMIT"), o.close()))
        timer.start()
        with db.write() as s:
            s.execute(text("UPDATE alembic_version SET version_num = version_num"))
            assert s.execute(text("PRAGMA busy_timeout")).scalar_one() == 15_000
        timer.join()
    db.dispose()


# --- Upserts --------------------------------------------------------------------------------


def test_rate_limit_counts_are_exact_under_concurrency(db: Database) -> None:
    seed_client(db)
    window = NOW.replace(second=0, microsecond=0)

    def hit(_: int) -> int:
        with db.write() as s:
            return count_in_window(s, client_id="client_a", scope="api", window_start=window)

    with ThreadPoolExecutor(8) as pool:
        counts = list(pool.map(hit, range(80)))
    assert sorted(counts) == list(range(1, 81))
    assert hit(0) == 81
    with db.write() as s:  # another window, another scope: separate buckets
        assert count_in_window(s, client_id="client_a", scope="otp", window_start=window) == 1


def test_a_device_report_is_applied_once(db: Database) -> None:
    (device,) = seed_client(db)
    results: list[bool] = []
    for _ in range(2):
        with db.write() as s:
            results.append(mark_report_processed(s, device_id=device, report_id="r1"))
    assert results == [True, False]


def test_utcnow_is_aware() -> None:
    assert utcnow().tzinfo is dt.UTC
