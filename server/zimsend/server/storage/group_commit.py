"""Group commit: many small writes in one transaction, each keeping its own result.

The server batches four kinds of writes (the accept lane's send requests, the phones'
reports, their connects and their heartbeats): each is a few statements, and one transaction
per item made SQLite's single write lock — its commit — the limit. The mechanics they share
live here, once:

- `commit_each`, the core (synchronous: it runs in the thread that holds the database
  session): the batch in one transaction; when the batch fails, each item is retried in a
  transaction of its own, so one bad item fails only itself — except when the storage
  itself is failing (disk full, read-only, unreachable: `storage_problem`), when each
  alone would fail the same way and every item gets that error at once. An item can also
  ask to be retried alone from a batch that committed (`RETRY_ALONE`: the accept lane's
  idempotency-key race).
- Two thin collectors over it, so a loop keeps the shape that is cheapest for it:
  `ThreadLane`, one thread taking what waits in a `SimpleQueue` (the accept lane: the
  hot path, no event-loop hop before its transaction), and `AsyncLane`, a task of the
  event loop that hands each batch to a worker thread (the device link's writers). Both
  take everything waiting up to `max_batch` — an item arriving while a batch is written
  joins the next one, so an idle server adds no delay — keep the order, give each item
  its own future, and on `close` / `flush` write what already waits before stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, Generic, TypeVar

from zimsend.server import logs
from zimsend.server.storage.availability import storage_problem

__all__ = ["RETRY_ALONE", "AsyncLane", "RetryAlone", "ThreadLane", "commit_each"]

log = logs.get("zimsend.storage.group_commit")

T = TypeVar("T")
R = TypeVar("R")


class RetryAlone:
    """The type of `RETRY_ALONE`: a batch's answer for an item to run again in its own
    transaction."""

    def __repr__(self) -> str:
        return "RETRY_ALONE"


RETRY_ALONE: Final = RetryAlone()


def commit_each(
    items: Sequence[T],
    run_batch: Callable[[Sequence[T]], Sequence[R | BaseException | RetryAlone]],
    run_alone: Callable[[T], R],
    *,
    name: str,
) -> list[R | BaseException]:
    """Every item's result (or its exception), in order: `run_batch` writes them all in one
    transaction and answers per item; if it raises, each item goes to `run_alone` (its own
    transaction) — unless the storage is failing, then all get that error. `name` labels
    the log line of a failed batch."""
    try:
        answers: Sequence[R | BaseException | RetryAlone] = run_batch(items)
    except Exception as exc:
        if storage_problem(exc) is not None:
            # Full, unwritable or unreachable: each alone would fail the same way (the
            # condition itself is logged once, by storage.availability).
            return [exc] * len(items)
        logs.failure(log, "group_commit.batch_failed", exc, batch=name, size=len(items))
        answers = [RETRY_ALONE] * len(items)
    results: list[R | BaseException] = []
    for item, answer in zip(items, answers, strict=True):
        if isinstance(answer, RetryAlone):
            try:
                answer = run_alone(item)
            except Exception as exc:
                answer = exc
        results.append(answer)
    return results


def _settle(answers: list[tuple[asyncio.Future[Any], Any]]) -> None:
    for future, result in answers:
        if future.done():
            continue  # the caller went away (cancelled)
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)


class ThreadLane(Generic[T, R]):
    """One thread writing batches of what coroutines `submit` (see the module docstring).

    `process(batch)` returns each item's result or exception (usually via `commit_each`);
    if it raises anyway, every item of the batch gets `on_crash(exc)` and the lane goes on.
    Answers reach the waiting coroutines with one wake-up per event loop per batch."""

    def __init__(
        self,
        name: str,
        process: Callable[[list[T]], Sequence[R | BaseException]],
        *,
        max_batch: int,
        on_crash: Callable[[BaseException], BaseException],
    ) -> None:
        self.name = name
        self._process = process
        self._max_batch = max_batch
        self._on_crash = on_crash
        self._waiting: queue.SimpleQueue[tuple[T, asyncio.Future[R]] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        #: Batches written so far (items / batches = the batching achieved).
        self.batches = 0

    async def submit(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._ensure_started()
        self._waiting.put((item, future))
        return await future

    def close(self) -> None:
        """Stop after the items already waiting (idempotent)."""
        if self._thread is not None:
            self._waiting.put(None)
            self._thread.join(timeout=30)
            self._thread = None

    def _ensure_started(self) -> None:
        if self._thread is not None:
            return
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            first = self._waiting.get()
            if first is None:
                return
            batch = [first]
            stop = False
            while len(batch) < self._max_batch:
                try:
                    more = self._waiting.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                batch.append(more)
            self.batches += 1
            items = [item for item, _ in batch]
            results: Sequence[R | BaseException]
            try:
                results = self._process(items)
            except BaseException as exc:  # the lane must outlive any one batch
                log.error("group_commit.lane_error", lane=self.name, size=len(batch), exc_info=exc)
                results = [self._on_crash(exc)] * len(batch)
            self._answer(batch, results)
            if stop:
                return

    @staticmethod
    def _answer(
        batch: list[tuple[T, asyncio.Future[R]]], results: Sequence[R | BaseException]
    ) -> None:
        """Hand each item its result: one wake-up per event loop, not per item."""
        answers: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], Any]]] = {}
        for (_, future), result in zip(batch, results, strict=True):
            answers.setdefault(future.get_loop(), []).append((future, result))
        for loop, settled in answers.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_settle, settled)


class AsyncLane(Generic[T, R]):
    """A task of the event loop writing batches of what is `put` (see the module docstring).

    `process(batch)` is awaited (it hands the batch to a worker thread) and returns each
    item's result or exception; if it raises, every item gets that exception. `put` returns
    the item's future, or None with `wait=False` for a caller that wants no answer (its
    failure is then only logged by `process`)."""

    def __init__(
        self,
        name: str,
        process: Callable[[list[T]], Awaitable[Sequence[R | BaseException]]],
        *,
        max_batch: int,
    ) -> None:
        self.name = name
        self._process = process
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R] | None]] = []
        self._wake = asyncio.Event()

    def put(self, item: T, *, wait: bool = True) -> asyncio.Future[R] | None:
        future: asyncio.Future[R] | None = (
            asyncio.get_running_loop().create_future() if wait else None
        )
        self._waiting.append((item, future))
        self._wake.set()
        return future

    async def submit(self, item: T) -> R:
        future = self.put(item)
        assert future is not None
        return await future

    async def run(self) -> None:
        """The writer task: runs until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        """Write everything waiting now, batch after batch (also at shutdown)."""
        while self._waiting:
            batch = self._waiting[: self._max_batch]
            del self._waiting[: self._max_batch]
            await self._write(batch)

    def cancel_waiting(self) -> None:
        """Cancel the futures of items never written (shutdown after the writer stopped)."""
        waiting, self._waiting = self._waiting, []
        for _, future in waiting:
            if future is not None:
                future.cancel()

    async def _write(self, batch: list[tuple[T, asyncio.Future[R] | None]]) -> None:
        results: Sequence[R | BaseException]
        try:
            results = await self._process([item for item, _ in batch])
        except Exception as exc:  # never let one batch stop the writer
            logs.failure(log, "group_commit.batch_failed", exc, batch=self.name, size=len(batch))
            results = [exc] * len(batch)
        _settle(
            [
                (future, result)
                for (_, future), result in zip(batch, results, strict=True)
                if future is not None
            ]
        )
