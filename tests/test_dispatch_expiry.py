"""The dispatcher's expiry pass runs beside its rounds, never in front of them.

A pass (expired messages, messages stuck on a vanished phone, missing delivery reports) is
three write transactions over the queue; while it ran inside the round loop, every message
accepted meanwhile waited for it (one pass took 240 ms under `zimsend bench`). Here the real
`Dispatcher.run` with its database work replaced: rounds go on while a pass is stuck, passes
keep coming, and a failing pass stops neither.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from zimsend.server.devicelink import dispatcher as dispatcher_module
from zimsend.server.devicelink.dispatcher import Dispatcher


def test_rounds_go_on_while_an_expiry_pass_is_stuck_and_passes_keep_coming(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dispatcher_module, "EXPIRY_INTERVAL_S", 0.05)

    async def main() -> None:
        dispatcher = Dispatcher(SimpleNamespace(), {})  # type: ignore[arg-type]  # no state: its database work is replaced below
        fake: Any = dispatcher
        release = asyncio.Event()
        passes: list[float] = []
        rounds: list[float] = []

        async def nothing() -> None:
            await asyncio.sleep(0)

        async def round_() -> None:
            rounds.append(time.monotonic())

        async def expire() -> None:
            passes.append(time.monotonic())
            if len(passes) == 1:
                await release.wait()  # the first pass hangs (a long wait for the write lock)
            elif len(passes) == 2:
                raise RuntimeError("storage hiccup")  # logged; the next pass still comes

        fake.simulated = SimpleNamespace(resume=nothing)
        fake.round, fake._expire = round_, expire
        dispatcher._next_poll = time.monotonic() + 60  # rounds only when woken
        task = asyncio.create_task(dispatcher.run())
        for _ in range(200):
            await asyncio.sleep(0.01)
            if passes:
                break
        assert passes, "no expiry pass started"
        before = len(rounds)
        for _ in range(3):
            dispatcher.wake("client")
            await asyncio.sleep(0.05)
        assert len(rounds) >= before + 3, "rounds waited for the stuck expiry pass"
        release.set()
        for _ in range(300):
            await asyncio.sleep(0.01)
            if len(passes) >= 4:
                break
        assert len(passes) >= 4, "expiry passes stopped after one hung and one failed"
        dispatcher.wake("client")
        await asyncio.sleep(0.05)
        assert not task.done()
        task.cancel()
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done
        assert task.cancelled()

    asyncio.run(main())
