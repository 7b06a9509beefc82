"""`PatientDatabase`: the worker's `Database`, which waits for SQLite's write lock by trying
again every few milliseconds instead of sleeping in SQLite's busy handler.

Why: under load the server holds SQLite's single write lock almost all the time, with gaps
between its transactions far shorter than a millisecond (its own writers hand the lock to each
other through a Python lock, `storage.database`). SQLite's busy handler sleeps between tries —
1, 2, 5, 10 … then 100 ms — so a waiting worker wakes up long after the gap has closed:
`zimsend bench` saw 0.3 webhooks/s while the server was busy, and all of them after it went
idle. The worker's connections therefore give up after `BUSY_TIMEOUT_MS` and `write()` begins
again at once, for up to `PATIENCE_S` (what `busy_timeout` allowed before); a transaction is
only ever retried before its `BEGIN IMMEDIATE` succeeded, so nothing runs twice.

PostgreSQL has no single write lock: there `write()` is `Database.write()` unchanged.

Tried and reverted: one cross-process lock (`flock` on a file next to the database) taken by
every writer of every process. It was fair, and fair was worse: the server's dispatch waited
behind the worker's cycles (docs/benchmarks.md, `44b5efb` and its revert). The server's
writers poll too (every 0.5 ms, `storage.database`), so neither sleeps through the other's gaps.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Final

from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from zimsend.server.storage import Database

__all__ = ["BUSY_TIMEOUT_MS", "PATIENCE_S", "PatientDatabase"]

#: How long one try waits inside SQLite (its busy handler tries at 0, 1 and 3 ms).
BUSY_TIMEOUT_MS: Final = 3
#: How long `write()` keeps trying before it lets "database is locked" through.
PATIENCE_S: Final = 15.0


class PatientDatabase(Database):
    """`Database.from_url(url, busy_timeout_ms=BUSY_TIMEOUT_MS)` for the worker; see module
    docstring."""

    @contextmanager
    def write(self, *, urgent: bool = False) -> Iterator[Session]:
        if self.dialect != "sqlite":
            with super().write(urgent=urgent) as session:
                yield session
            return
        deadline = time.monotonic() + PATIENCE_S
        while True:
            stack = ExitStack()
            try:
                session = stack.enter_context(super().write(urgent=urgent))
                session.connection()  # BEGIN IMMEDIATE: takes the write lock now
            except OperationalError as exc:
                stack.__exit__(type(exc), exc, exc.__traceback__)  # rolls back, frees the lock
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
                continue
            break
        with stack:
            yield session

    def migrate(self, revision: str = "head") -> None:
        """`Database.migrate`, tried again while another process holds the lock (a failed
        upgrade has rolled back: SQLite's DDL is transactional)."""
        deadline = time.monotonic() + PATIENCE_S
        while True:
            try:
                return super().migrate(revision)
            except OperationalError as exc:
                if not _locked(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.01)


def _locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)
