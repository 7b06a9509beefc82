"""The dispatcher's task ends when cancelled, even when a wake-up comes in the same moment.

Found by the fault suite (tests/test_faults.py, `sigterm-server`): a server stopped under load
sometimes never exited. The hub's shutdown cancels the dispatcher's task and waits for it; on
Python 3.11, `asyncio.wait_for(event.wait(), t)` returns normally — swallowing the cancellation —
when the event is set in the same loop iteration as the cancel, and the dispatcher then sleeps
and dispatches for ever. Here the real `Dispatcher.run` is cancelled right after a wake-up.
"""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

from zimsend.server.devicelink.dispatcher import Dispatcher


def test_a_cancel_that_meets_a_wake_up_still_ends_the_dispatcher() -> None:
    async def nothing() -> None:  # a round (or expiry pass) that finds nothing to do
        await asyncio.sleep(0)

    async def main() -> None:
        dispatcher = Dispatcher(SimpleNamespace(), {})  # type: ignore[arg-type]  # no state: its rounds are replaced below
        fake: Any = dispatcher
        fake.simulated = SimpleNamespace(resume=nothing)
        fake.round = fake._expire = nothing
        dispatcher._next_poll = time.monotonic() + 60  # asleep until then, unless woken
        task = asyncio.create_task(dispatcher.run())
        await asyncio.sleep(0.05)
        assert not task.done()
        dispatcher.wake()  # sets the event ...
        task.cancel()  # ... in the same loop iteration as the hub's cancel
        done, _ = await asyncio.wait({task}, timeout=2)
        assert done, "the dispatcher ignored its cancellation and went back to sleep"
        assert task.cancelled()

    asyncio.run(main())
