"""The worker's `PatientDatabase` takes SQLite's write lock in a gap another process leaves,
and still gives up after its patience (`zimsend.server.worker.writelock`)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from zimsend.server.storage import Database
from zimsend.server.worker import writelock
from zimsend.server.worker.writelock import BUSY_TIMEOUT_MS, PatientDatabase


def open_databases(tmp_path: Path) -> tuple[Database, PatientDatabase]:
    url = f"sqlite:///{tmp_path / 'zimsend.db'}"
    plain = Database.from_url(url)
    plain.migrate()
    return plain, PatientDatabase.from_url(url, busy_timeout_ms=BUSY_TIMEOUT_MS)


def hold_lock(path: Path, seconds: float, taken: threading.Event) -> None:
    """Another process's writer: holds the write lock for `seconds`."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    taken.set()
    time.sleep(seconds)
    other.execute("COMMIT")
    other.close()


def test_a_write_waits_for_the_lock_and_then_commits(tmp_path: Path) -> None:
    plain, patient = open_databases(tmp_path)
    taken = threading.Event()
    holder = threading.Thread(target=hold_lock, args=(tmp_path / "zimsend.db", 0.3, taken))
    holder.start()
    taken.wait()
    started = time.monotonic()
    with patient.write() as session:  # far longer than BUSY_TIMEOUT_MS: it kept trying
        session.execute(text("CREATE TABLE t (x INTEGER)"))
        session.execute(text("INSERT INTO t VALUES (1)"))
    assert 0.25 < time.monotonic() - started < 5
    holder.join()
    with plain.session() as session:
        assert session.execute(text("SELECT x FROM t")).scalar_one() == 1
    patient.dispose()
    plain.dispose()


def test_a_failing_body_rolls_back_and_is_not_retried(tmp_path: Path) -> None:
    plain, patient = open_databases(tmp_path)
    runs = []

    def failing_body() -> None:
        with patient.write() as session:
            runs.append(1)
            session.execute(text("CREATE TABLE t (x INTEGER)"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        failing_body()
    assert runs == [1]
    with plain.session() as session:
        assert (
            session.execute(
                text("SELECT count(*) FROM sqlite_master WHERE name = 't'")
            ).scalar_one()
            == 0
        )
    patient.dispose()
    plain.dispose()


def test_it_gives_up_after_its_patience(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, patient = open_databases(tmp_path)
    monkeypatch.setattr(writelock, "PATIENCE_S", 0.2)
    taken = threading.Event()
    holder = threading.Thread(target=hold_lock, args=(tmp_path / "zimsend.db", 1.0, taken))
    holder.start()
    taken.wait()
    with pytest.raises(OperationalError, match="locked"), patient.write():
        pass
    holder.join()
    patient.dispose()
