"""`Database`: one engine, sessions for reading, and write transactions that are safe on both
SQLite and PostgreSQL.

Why sync SQLAlchemy: the server is asyncio and the worker is trio, and SQLAlchemy's async engine
only speaks asyncio. One sync storage layer serves both (DESIGN): the server calls it from a
thread, the worker through `trio.to_thread`. An engine is thread-safe; a session is not — use
one session per thread and per unit of work.

Why `write()`: SQLite has a single writer. A transaction that starts by reading and then writes
cannot wait for the lock in WAL mode; it fails at once with "database is locked". `write()`
therefore starts SQLite transactions with `BEGIN IMMEDIATE`, which takes the write lock up
front and waits (`busy_timeout`) for it. On PostgreSQL it is an ordinary transaction, and
claims use `FOR UPDATE SKIP LOCKED` (see `claims`). Every transaction that writes should go
through `write()`.

Why writers of one process queue on a Python lock first (SQLite only): when several threads
wait for the write lock inside SQLite, its busy handler *sleeps* between retries (1, 2, 5, 10,
… up to 100 ms), so under load most waiters sleep long after the lock is free and the server's
send path collapsed into a convoy (`zimsend bench`: 220 SendSms/s, p50 300 ms). A
`threading.Lock` hands the lock to the next thread the moment it is released; SQLite's own
lock (and `busy_timeout`) still arbitrates between processes (server, worker, CLI).
An urgent writer (`write(urgent=True)`: the dispatch round, whose wait is every message's
accept → phone latency) goes before the writers already waiting: measured in `zimsend bench`
e2e, the round's wait in that queue was most of its time (docs/benchmarks.md).
The one writer of this process that waits inside SQLite (for another process: the worker, the
CLI) tries `BEGIN IMMEDIATE` every half millisecond instead of sleeping through the busy
handler's steps (`_begin_immediate_polling`): the Python lock's queue waits on that writer.

Why `availability`: a full or read-only disk is a condition of the process, not an error of
one request (see `availability`); `check_storage()` is how it ends.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

from zimsend.server.metrics import DB_WRITE_SECONDS

from . import schema
from .availability import StorageAvailability, StorageProblem, storage_problem

if TYPE_CHECKING:
    from ..config import Settings

__all__ = ["Database", "normalize_url"]

_WRITE_OPTION = "zimsend_write"
POOL_SIZE = 16
#: Below this much free space on SQLite's disk, `check_storage` still says FULL: a disk with a
#: few free bytes takes a one-page write now and then while real ones keep failing.
MIN_FREE_BYTES = 1 << 20
#: SQLite writers of this process wait for another process's write transaction by trying
#: `BEGIN IMMEDIATE` this often, for this long, before SQLite's own busy handler takes over.
POLL_SLEEP_S = 0.0005
POLL_S = 1.0


def normalize_url(url: str | URL) -> URL:
    """Accept `postgres://` and `postgresql://` and use psycopg 3 for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


class Database:
    """The storage entry point. Create one per process with `from_url` or `from_settings`."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._write_engine = engine.execution_options(**{_WRITE_OPTION: True})
        # Re-entrant: a thread already writing that opens another write() waits in SQLite
        # (busy_timeout), exactly as it did before this lock existed.
        self._writers = _WriterLock() if engine.dialect.name == "sqlite" else None
        self.availability = StorageAvailability(engine.url.render_as_string(hide_password=True))
        database = engine.url.database or ""
        self._sqlite_folder = (
            Path(database).expanduser().resolve().parent
            if engine.dialect.name == "sqlite"
            and database not in ("", ":memory:")
            and not database.startswith("file:")
            else None
        )
        event.listen(engine, "handle_error", self._on_error)
        #: PostgreSQL backend pids of this Database's open connections: the server's listener
        #: skips the NOTIFYs its own commits caused (storage/wakeups.py `listen_in_loop`).
        self.backend_pids: set[int] = set()
        if engine.dialect.name == "postgresql":
            event.listen(engine, "connect", self._remember_backend)
            event.listen(engine, "close", self._forget_backend)
            event.listen(engine, "close_detached", self._forget_backend)

    def _remember_backend(self, dbapi_connection: Any, *_record: Any) -> None:
        if (pid := _backend_pid(dbapi_connection)) is not None:
            self.backend_pids.add(pid)

    def _forget_backend(self, dbapi_connection: Any, *_record: Any) -> None:
        if (pid := _backend_pid(dbapi_connection)) is not None:
            self.backend_pids.discard(pid)

    def _on_error(self, context: Any) -> None:
        """Every database error passes here (connects included): a storage problem is
        reported, and the pooled connections are discarded, so the next ones are opened afresh
        (a SQLite connection opened while the file was read-only stays read-only forever)."""
        problem = storage_problem(context.original_exception)
        if problem is StorageProblem.UNREACHABLE and context.is_pre_ping:
            return  # a pooled connection outlived a restart: the pool opens a new one
        if problem is not None:
            context.is_disconnect = True
            self.availability.failed(problem)

    def check_storage(self) -> StorageProblem | None:
        """Try a real write now (and, on SQLite, look at the free space); mark storage
        available when it works. Returns the problem that remains, None when none does.
        Errors other than storage problems propagate."""
        if self._sqlite_folder is not None:
            stat = os.statvfs(self._sqlite_folder)
            if stat.f_bavail * stat.f_frsize < MIN_FREE_BYTES:
                self.availability.failed(StorageProblem.FULL)
                return StorageProblem.FULL
        try:
            with self.write() as session:
                # A write of one row that changes nothing: it needs the write lock, a page of
                # journal and a writable file, like any real write.
                session.execute(text("UPDATE alembic_version SET version_num = version_num"))
        except Exception as exc:
            problem = storage_problem(exc)
            if problem is None:
                raise
            self.availability.failed(problem)
            return problem
        self.availability.recovered()
        return None

    @classmethod
    def from_url(
        cls, url: str | URL, *, busy_timeout_ms: int = 15_000, **engine_kwargs: Any
    ) -> Self:
        """Create the engine. SQLite files (and their folder) are created on first connect."""
        parsed = normalize_url(url)
        # As many pooled connections as a server has database threads (8 API, 2 device
        # link, the accept lane, the rate limiter): with SQLAlchemy's default of 5, each
        # connection beyond it was closed on return and opened again on the next call.
        engine_kwargs.setdefault("pool_size", POOL_SIZE)
        if parsed.get_backend_name() == "sqlite":
            return cls(_sqlite_engine(parsed, busy_timeout_ms, engine_kwargs))
        engine_kwargs.setdefault("pool_pre_ping", True)
        return cls(create_engine(parsed, **engine_kwargs))

    @classmethod
    def from_settings(cls, settings: Settings) -> Database:
        return cls.from_url(settings.database_url_value)

    @property
    def dialect(self) -> str:
        """`"sqlite"` or `"postgresql"`."""
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session for reads (and ORM work the caller commits itself).

        Objects stay usable after commit (`expire_on_commit=False`), so they can be handed to
        another thread or returned to an async caller.
        """
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def write(self, *, urgent: bool = False) -> Iterator[Session]:
        """A write transaction: committed when the block ends, rolled back if it raises.
        Its time, lock wait included, is `zimsend_db_write_transaction_seconds`.

        On SQLite it begins with `BEGIN IMMEDIATE` (waits for the single write lock instead of
        failing mid-transaction); on PostgreSQL it is a plain READ COMMITTED transaction.
        `urgent`: on SQLite, go before this process's other waiting writers.
        """
        started = time.perf_counter()
        try:
            with (
                self._writers.held(urgent) if self._writers is not None else nullcontext(),
                Session(self._write_engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        finally:
            DB_WRITE_SECONDS.observe(time.perf_counter() - started)

    def migrate(self, revision: str = "head") -> None:
        """Bring the schema to `revision` (Alembic `upgrade`); safe to run from two processes."""
        schema.upgrade(self._write_engine, revision)

    def dispose(self) -> None:
        """Close pooled connections (end of process or of a test)."""
        self.engine.dispose()


class _WriterLock:
    """A re-entrant lock whose urgent waiters go before the others (see the module docstring).
    Among waiters of one kind the order is whatever the condition's wake-ups give, as it was
    with `threading.RLock`."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._owner: int | None = None
        self._depth = 0
        self._urgent = 0  # urgent writers waiting

    @contextmanager
    def held(self, urgent: bool) -> Iterator[None]:
        me = threading.get_ident()
        with self._cond:
            if self._owner == me:
                self._depth += 1
            else:
                self._urgent += urgent
                try:
                    while self._owner is not None or (self._urgent and not urgent):
                        self._cond.wait()
                finally:
                    self._urgent -= urgent
                self._owner, self._depth = me, 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    self._owner = None
                    self._cond.notify_all()


def _backend_pid(dbapi_connection: Any) -> int | None:
    """The server process of a psycopg connection (libpq keeps it, even once broken)."""
    try:
        return int(dbapi_connection.info.backend_pid)
    except Exception:  # not psycopg, or no pid known: nothing to remember
        return None


def _create_private_file(path: Path) -> None:
    """Create the SQLite file (if missing) mode 600 in a folder created mode 700.

    Why before SQLite opens it: SQLite creates a missing database file with the umask's mode
    (usually 644), and its WAL and shared-memory files copy the database file's mode — the
    messages, phone numbers and hashes would be readable by every local user. An existing file
    keeps its mode (an operator may have chosen it).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def _sqlite_engine(url: URL, busy_timeout_ms: int, engine_kwargs: dict[str, Any]) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in str(url)
    connect_args = engine_kwargs.pop("connect_args", {})
    connect_args.setdefault("check_same_thread", False)
    if in_memory:
        # One shared connection, or each thread would see its own empty database.
        engine_kwargs.setdefault("poolclass", StaticPool)
        engine_kwargs.pop("pool_size", None)
    elif not database.startswith("file:"):
        _create_private_file(Path(database).expanduser().resolve())
    engine = create_engine(url, connect_args=connect_args, **engine_kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if not in_memory:
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        if not conn.get_execution_options().get(_WRITE_OPTION, False):
            conn.exec_driver_sql("BEGIN")
        elif not _begin_immediate_polling(conn.connection.dbapi_connection, busy_timeout_ms):
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # SQLite's busy handler, then any error

    return engine


def _begin_immediate_polling(dbapi_connection: Any, busy_timeout_ms: int) -> bool:
    """Try `BEGIN IMMEDIATE` every `POLL_SLEEP_S` for up to `POLL_S` instead of sleeping in
    SQLite's busy handler (1, 2, 5, 10, … 100 ms between tries: a writer of this process that
    finds the worker's transaction in the way waited until the next step, not until it
    ended). True once begun; False when the lock stayed busy, or on any other error: the
    caller then begins the ordinary way (busy handler, errors through SQLAlchemy)."""
    if busy_timeout_ms <= POLL_S * 1000:
        return False  # a connection meant to give up sooner (the worker's: it polls itself)
    execute = dbapi_connection.execute
    try:
        execute("PRAGMA busy_timeout=0")
    except sqlite3.Error:
        return False
    try:
        deadline = time.monotonic() + POLL_S
        while True:
            try:
                execute("BEGIN IMMEDIATE")
                return True
            except sqlite3.OperationalError as exc:
                if "database is locked" not in str(exc) or time.monotonic() > deadline:
                    return False
            time.sleep(POLL_SLEEP_S)
    finally:
        execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
