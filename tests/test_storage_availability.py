"""The storage condition on real drivers (issue 12 item 9): what SQLite and PostgreSQL really
raise when they cannot write is recognised, reported once to the `Database`, and ends with
`check_storage()` on fresh connections. tests/test_storage_outage.py does the same through
real processes on a read-only mount and a full disk; here the causes each driver offers
without a mount: SQLite's per-connection `max_page_count` and a read-only URI, PostgreSQL's
`default_transaction_read_only`.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from zimsend.server import accounts
from zimsend.server.errors import ErrorCode, known_error
from zimsend.server.storage import Database
from zimsend.server.storage.availability import StorageProblem, storage_problem


def _problem(db: Database) -> StorageProblem | None:
    """The current problem, read afresh (mypy would keep an earlier assert's narrowing)."""
    return db.availability.problem


def test_a_full_sqlite_database_is_full_until_a_real_write_fits(sqlite_url: str) -> None:
    db = Database.from_url(sqlite_url, pool_size=1)
    db.migrate()
    heard: list[StorageProblem | None] = []
    db.availability.subscribe(heard.append)
    try:
        with db.engine.connect() as conn:  # the pool's only connection: capped at its size now
            pages = conn.exec_driver_sql("PRAGMA page_count").scalar()
            conn.exec_driver_sql(f"PRAGMA max_page_count = {pages}")

        def fill() -> None:
            for n in range(200):
                accounts.create_client(db, f"client {n} " + "x" * 80)

        with pytest.raises(DBAPIError) as caught:
            fill()
        assert storage_problem(caught.value) is StorageProblem.FULL
        error = known_error(caught.value)
        assert error is not None
        assert error.code == ErrorCode.UNAVAILABLE
        assert error.retry_after_seconds
        assert "full" in error.message
        assert "sqlite" not in error.message.lower()
        assert "INSERT" not in error.message
        assert db.availability.problem is StorageProblem.FULL
        # The capped connection was discarded: the check writes on a new one, and it fits.
        assert db.check_storage() is None
        assert _problem(db) is None
        assert heard == [StorageProblem.FULL, None]  # one change each way
        accounts.create_client(db, "after")
    finally:
        db.dispose()


def test_a_read_only_sqlite_file_is_unwritable(sqlite_url: str, tmp_path: Path) -> None:
    Database.from_url(sqlite_url).migrate()
    path = tmp_path / "zimsend.db"
    db = Database.from_url(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        with pytest.raises(DBAPIError) as caught:
            accounts.create_client(db, "nope")
        assert storage_problem(caught.value) is StorageProblem.UNWRITABLE
        assert db.availability.problem is StorageProblem.UNWRITABLE
        assert db.check_storage() is StorageProblem.UNWRITABLE
        with db.session() as session:  # reads still work
            assert session.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        db.dispose()


def test_a_read_only_postgresql_database_recovers_on_new_connections(
    postgres_database_url: str,
) -> None:
    db = Database.from_url(postgres_database_url)
    db.migrate()
    name = db.engine.url.database
    try:
        with db.engine.connect() as conn:
            conn.exec_driver_sql(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            conn.commit()
        db.engine.dispose()  # new sessions are read-only from now on
        with pytest.raises(DBAPIError) as caught:
            accounts.create_client(db, "nope")
        assert storage_problem(caught.value) is StorageProblem.UNWRITABLE  # SQLSTATE 25006
        assert db.availability.problem is StorageProblem.UNWRITABLE
        assert db.check_storage() is StorageProblem.UNWRITABLE
        with psycopg.connect(
            postgres_database_url.replace("+psycopg", ""),
            autocommit=True,
            options="-c default_transaction_read_only=off",
        ) as conn:
            conn.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = off')
        # The pooled read-only sessions were discarded on the error: fresh ones can write.
        assert db.check_storage() is None
        accounts.create_client(db, "after")
    finally:
        db.dispose()
