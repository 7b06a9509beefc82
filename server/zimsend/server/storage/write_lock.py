"""`WriteLock`: where every writer of one SQLite file waits its turn — the threads of a process
and the processes (server, worker, CLI) alike.

Why not SQLite's own lock alone: a writer that finds the lock taken waits in SQLite's busy
handler, which *sleeps* between tries (1, 2, 5, 10 … then 100 ms). Under load the lock is free
only for gaps far shorter than those sleeps, so waiters wake long after it was free and miss
it again: the server's send path collapsed into a convoy (220 SendSms/s, p50 300 ms), and a
busy server starved the webhook worker (0.3 webhooks/s) — `zimsend bench`, docs/benchmarks.md.

How: one `WriteLock` per file per process (`for_file`). A writer takes a re-entrant thread
lock (the process's threads queue there), then `flock(LOCK_EX)` on `<database>.write-lock`
(the processes queue there), then SQLite's `BEGIN IMMEDIATE` — which then finds the lock free
unless something outside ZimSend's writers holds it (a migration, a `sqlite3` shell), and
`busy_timeout` still covers that. A blocked `flock` is woken by the kernel the moment the
holder unlocks, and a process that dies holding it loses it with its file descriptor. A
thread that opens a write inside its own write keeps both locks (a depth count).

In-memory databases (one process) and systems without `fcntl` use the thread lock alone.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: processes fall back to SQLite's lock
    fcntl = None  # type: ignore[assignment]

__all__ = ["WriteLock"]

_registry: dict[str, WriteLock] = {}
_registry_lock = threading.Lock()


class WriteLock:
    """Context manager; see the module docstring."""

    def __init__(self, lock_file: Path | None) -> None:
        self._threads = threading.RLock()
        self._path = lock_file
        self._fd: int | None = None
        self._fd_pid = 0  # a forked child must open its own: a shared descriptor shares the lock
        self._depth = 0  # only the thread holding `_threads` touches it

    @classmethod
    def for_file(cls, database: Path | None) -> WriteLock:
        """The process's lock for the SQLite file `database` (None: in-memory)."""
        if database is None:
            return cls(None)
        key = str(database.expanduser().resolve())
        with _registry_lock:
            lock = _registry.get(key)
            if lock is None:
                lock = _registry[key] = cls(Path(key + ".write-lock"))
            return lock

    def __enter__(self) -> WriteLock:
        self._threads.acquire()
        try:
            if self._depth == 0 and self._path is not None and fcntl is not None:
                if self._fd is None or self._fd_pid != os.getpid():
                    self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600)
                    self._fd_pid = os.getpid()
                fcntl.flock(self._fd, fcntl.LOCK_EX)  # releases the GIL while it waits
        except BaseException:
            self._threads.release()
            raise
        self._depth += 1
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None and fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()
