"""The group-commit helper the server's four batching loops share
(server/zimsend/server/storage/group_commit.py): one bad item fails only itself, the order
is kept, and stopping writes what already waits."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence

import pytest

from zimsend.server.storage.group_commit import (
    RETRY_ALONE,
    AsyncLane,
    RetryAlone,
    ThreadLane,
    commit_each,
)


class _Store:
    """A stand-in for a transaction: a batch containing a "bad" item fails as a whole (as
    one rejected statement aborts a transaction); alone, only that item fails."""

    def __init__(self) -> None:
        self.committed: list[str] = []
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def batch(self, items: Sequence[str]) -> list[str | BaseException | RetryAlone]:
        with self.lock:
            self.batches.append(list(items))
            if any(i.startswith("bad") for i in items):
                raise ValueError("one bad item aborts the transaction")
            self.committed += items
        return [i.upper() for i in items]

    def alone(self, item: str) -> str:
        if item.startswith("bad"):
            raise ValueError(f"{item} is refused")
        with self.lock:
            self.committed.append(item)
        return item.upper()


def test_a_failing_item_fails_alone_and_the_others_succeed_in_order() -> None:
    store = _Store()
    results = commit_each(["a", "bad1", "b", "c"], store.batch, store.alone, name="test")
    assert results[0] == "A"
    assert isinstance(results[1], ValueError)
    assert "bad1" in str(results[1])
    assert results[2:] == ["B", "C"]
    assert store.committed == ["a", "b", "c"]  # nothing of the failed batch, each alone after


def test_an_item_can_ask_to_be_retried_alone_from_a_committed_batch() -> None:
    alone: list[str] = []

    def batch(items: Sequence[str]) -> list[str | BaseException | RetryAlone]:
        return [RETRY_ALONE if i == "raced" else i.upper() for i in items]

    def run_alone(item: str) -> str:
        alone.append(item)
        return "replayed"

    assert commit_each(["x", "raced", "y"], batch, run_alone, name="test") == ["X", "replayed", "Y"]
    assert alone == ["raced"]


def test_a_failing_storage_fails_every_item_at_once_without_retries() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    alone: list[str] = []

    def batch(items: Sequence[str]) -> list[str | BaseException | RetryAlone]:
        raise full

    def run_alone(item: str) -> str:
        alone.append(item)
        return item

    assert commit_each(["a", "b"], batch, run_alone, name="test") == [full, full]
    assert alone == []  # each alone would fail the same way


def test_thread_lane_batches_waiting_items_keeps_order_and_fails_one_alone() -> None:
    asyncio.run(_thread_lane_batches_waiting_items_keeps_order_and_fails_one_alone())


async def _thread_lane_batches_waiting_items_keeps_order_and_fails_one_alone() -> None:
    store = _Store()
    release = threading.Event()

    def process(items: list[str]) -> list[str | BaseException]:
        release.wait(10)  # the first batch holds the lane while the others queue up
        return commit_each(items, store.batch, store.alone, name="test")

    lane: ThreadLane[str, str] = ThreadLane(
        "test-lane", process, max_batch=3, on_crash=lambda exc: exc
    )
    names = ["a", "b", "bad", "c", "d", "e", "f"]
    tasks = [asyncio.create_task(lane.submit(n)) for n in names]
    await asyncio.sleep(0.2)
    release.set()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    lane.close()
    assert [r if isinstance(r, str) else "error" for r in results] == [
        "A",
        "B",
        "error",
        "C",
        "D",
        "E",
        "F",
    ]
    assert all(len(b) <= 3 for b in store.batches)  # at most max_batch per transaction
    assert lane.batches < len(names)  # waiting items shared transactions
    assert [i for i in store.committed] == ["a", "b", "c", "d", "e", "f"]  # in order


def test_thread_lane_outlives_a_crashing_batch() -> None:
    asyncio.run(_thread_lane_outlives_a_crashing_batch())


async def _thread_lane_outlives_a_crashing_batch() -> None:
    calls = 0

    def process(items: list[str]) -> list[str | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return list(items)

    lane: ThreadLane[str, str] = ThreadLane(
        "test-lane", process, max_batch=10, on_crash=lambda exc: LookupError(str(exc))
    )
    with pytest.raises(LookupError, match="bug"):
        await lane.submit("first")
    assert await lane.submit("second") == "second"
    lane.close()


def test_thread_lane_close_answers_what_already_waits() -> None:
    asyncio.run(_thread_lane_close_answers_what_already_waits())


async def _thread_lane_close_answers_what_already_waits() -> None:
    release = threading.Event()

    def process(items: list[str]) -> list[str | BaseException]:
        release.wait(10)
        return list(items)

    lane: ThreadLane[str, str] = ThreadLane(
        "test-lane", process, max_batch=2, on_crash=lambda exc: exc
    )
    tasks = [asyncio.create_task(lane.submit(str(n))) for n in range(5)]
    await asyncio.sleep(0.2)
    closing = asyncio.get_running_loop().run_in_executor(None, lane.close)
    await asyncio.sleep(0.1)
    release.set()
    await closing
    assert await asyncio.gather(*tasks) == ["0", "1", "2", "3", "4"]


def test_async_lane_fails_one_alone_keeps_order_and_flush_drains() -> None:
    asyncio.run(_async_lane_fails_one_alone_keeps_order_and_flush_drains())


async def _async_lane_fails_one_alone_keeps_order_and_flush_drains() -> None:
    store = _Store()

    async def process(items: list[str]) -> list[str | BaseException]:
        return await asyncio.to_thread(commit_each, items, store.batch, store.alone, name="test")

    lane: AsyncLane[str, str] = AsyncLane("test-lane", process, max_batch=2)
    futures = [lane.put(n) for n in ["a", "bad", "b", "c", "d"]]
    unanswered = lane.put("e", wait=False)
    assert unanswered is None
    await lane.flush()  # no writer task: flush alone writes everything waiting
    results = [f.result() if f is not None and f.exception() is None else "error" for f in futures]
    assert results == ["A", "error", "B", "C", "D"]
    assert store.committed == ["a", "b", "c", "d", "e"]
    assert all(len(b) <= 2 for b in store.batches)


def test_async_lane_writer_task_answers_submits_and_survives_a_failing_batch() -> None:
    asyncio.run(_async_lane_writer_task_answers_submits_and_survives_a_failing_batch())


async def _async_lane_writer_task_answers_submits_and_survives_a_failing_batch() -> None:
    calls = 0

    async def process(items: list[str]) -> list[str | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("bug")
        return [i * 2 for i in items]

    lane: AsyncLane[str, str] = AsyncLane("test-lane", process, max_batch=10)
    writer = asyncio.create_task(lane.run())
    try:
        with pytest.raises(RuntimeError, match="bug"):
            await asyncio.wait_for(lane.submit("x"), 10)
        assert await asyncio.wait_for(lane.submit("y"), 10) == "yy"
    finally:
        writer.cancel()
    left = lane.put("never written")
    assert left is not None
    lane.cancel_waiting()
    assert left.cancelled()
