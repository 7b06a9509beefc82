"""Whether the database can be written: one condition per process, said once when it changes.

Why: a full disk or a read-only database used to fail every write with 500 INTERNAL and a
traceback per request (3,600 log lines in 40 s), while health stayed SERVING; a server started
on a read-only database kept its read-only SQLite connections after the permissions were back,
and failed until restarted (issue 12 item 9). Here:

- `storage_problem(exc)` recognises what the drivers say (SQLite "database or disk is full",
  "attempt to write a readonly database", "unable to open database file", "disk I/O error";
  PostgreSQL SQLSTATE 53100 disk full, 25006 read-only transaction, 58030 I/O error, class 08
  and 57P01-57P03 or a failed connection: the server is down or restarting) as one of three
  `StorageProblem`s; everything else is not a storage condition;
- `StorageAvailability` holds the current problem of one `Database`: the engine reports every
  such failure to it (`Database`'s `handle_error` hook, which also discards the pooled
  connections, so the next ones are opened afresh: writable once the disk is), and it logs one
  line when the problem starts or changes and one when it ends; listeners (the server's health)
  hear the same changes;
- it ends only when `Database.check_storage()` succeeds (free space on SQLite's disk and a real
  write), not on the first write that happens to fit: a nearly full disk still takes a
  one-page write now and then, and the condition would flap.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable

from zimsend.server import logs

__all__ = ["StorageAvailability", "StorageProblem", "storage_problem"]

log = logs.get("zimsend.storage")


class StorageProblem(enum.Enum):
    """Why the database cannot be written; `message` is what a caller is told."""

    FULL = "full"
    UNWRITABLE = "unwritable"
    UNREACHABLE = "unreachable"

    @property
    def message(self) -> str:
        if self is StorageProblem.FULL:
            return (
                "The server's storage is full, so nothing can be saved right now; retry "
                "later (the operator has been told through the server's health)."
            )
        if self is StorageProblem.UNREACHABLE:
            return (
                "The server cannot reach its database storage right now, so nothing can "
                "be saved; retry later (the operator has been told through the server's "
                "health)."
            )
        return (
            "The server's storage cannot be written (read-only or unreachable), so "
            "nothing can be saved right now; retry later (the operator has been told "
            "through the server's health)."
        )


# SQLite result codes (`sqlite3.Error.sqlite_errorname`, extended names start with these).
_SQLITE_PROBLEMS = (
    ("SQLITE_FULL", StorageProblem.FULL),
    ("SQLITE_READONLY", StorageProblem.UNWRITABLE),
    ("SQLITE_CANTOPEN", StorageProblem.UNWRITABLE),
    ("SQLITE_IOERR", StorageProblem.UNWRITABLE),
    ("SQLITE_PERM", StorageProblem.UNWRITABLE),
)
# The same, from the message, for drivers or wrappers that lose the code.
_SQLITE_MESSAGES = (
    ("database or disk is full", StorageProblem.FULL),
    ("readonly database", StorageProblem.UNWRITABLE),
    ("unable to open database file", StorageProblem.UNWRITABLE),
    ("disk i/o error", StorageProblem.UNWRITABLE),
)
# PostgreSQL SQLSTATEs (psycopg errors' `sqlstate`): disk_full, read_only_sql_transaction,
# io_error.
_POSTGRES_PROBLEMS = {
    "53100": StorageProblem.FULL,
    "25006": StorageProblem.UNWRITABLE,
    "58030": StorageProblem.UNWRITABLE,
    # admin_shutdown, crash_shutdown, cannot_connect_now: the server stops or starts.
    "57P01": StorageProblem.UNREACHABLE,
    "57P02": StorageProblem.UNREACHABLE,
    "57P03": StorageProblem.UNREACHABLE,
}


def storage_problem(exc: BaseException | None) -> StorageProblem | None:
    """The storage condition behind `exc` (SQLAlchemy's wrapper, the driver's error, or any
    exception raised from one), or None when it is something else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        problem = _own_problem(exc)
        if problem is not None:
            return problem
        exc = getattr(exc, "orig", None) or exc.__cause__ or exc.__context__
    return None


def _own_problem(exc: BaseException) -> StorageProblem | None:
    name = getattr(exc, "sqlite_errorname", None)
    if isinstance(name, str):
        for prefix, problem in _SQLITE_PROBLEMS:
            if name.startswith(prefix):
                return problem
    sqlstate = getattr(exc, "sqlstate", None)
    if isinstance(sqlstate, str) and sqlstate in _POSTGRES_PROBLEMS:
        return _POSTGRES_PROBLEMS[sqlstate]
    if isinstance(sqlstate, str) and sqlstate.startswith("08"):  # connection_exception
        return StorageProblem.UNREACHABLE
    if (
        type(exc).__module__.startswith("psycopg")
        and sqlstate is None
        and type(exc).__name__ == "OperationalError"
    ):
        return StorageProblem.UNREACHABLE  # refused, closed or timed out: libpq gives no code
    if type(exc).__module__ == "sqlite3":
        text = str(exc).lower()
        for fragment, problem in _SQLITE_MESSAGES:
            if fragment in text:
                return problem
    return None


Listener = Callable[["StorageProblem | None"], None]


class StorageAvailability:
    """The current `StorageProblem` of one database (None: writable as far as we know).
    Thread-safe: reported from database threads, read anywhere."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._problem: StorageProblem | None = None
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []

    @property
    def problem(self) -> StorageProblem | None:
        return self._problem

    def subscribe(self, listener: Listener) -> None:
        """Call `listener(problem)` on every change (from whichever thread saw it)."""
        self._listeners.append(listener)

    def failed(self, problem: StorageProblem) -> None:
        self._change(problem)

    def recovered(self) -> None:
        self._change(None)

    def _change(self, problem: StorageProblem | None) -> None:
        with self._lock:
            if problem is self._problem:
                return
            before, self._problem = self._problem, problem
        if problem is None:
            log.warning("storage.writable_again", database=self.name, was=before and before.value)
        else:
            log.error(
                "storage.unavailable",
                database=self.name,
                problem=problem.value,
                detail="writes fail until this is fixed; health says NOT_SERVING",
            )
        for listener in self._listeners:
            listener(problem)
