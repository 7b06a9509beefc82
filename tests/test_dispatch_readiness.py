"""A dispatch round costs what changed, not the number of connected phones (issue 7, the
reconnect storm): the real `Dispatcher` on a real SQLite database with a thousand connected,
idle, unpaced phones of one client. Counted, not timed: `Dispatcher.requests_built` is how many
claim requests rounds have built, which is what a round's cost grows with.

What it shows: each welcomed phone is looked at once; polls with nothing queued look at no more
than one idle batch (`IDLE_BATCH`) per client; a new message, a message pinned to the phone at
the back of the idle queue, and a message written without a wake-up (as another replica would)
each reach a phone, still without walking the fleet.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable
from typing import Any

import pytest

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.config import Settings
from zimsend.server.devicelink.connections import DeviceConfig
from zimsend.server.devicelink.dispatcher import IDLE_BATCH, POLL_INTERVAL_S, Dispatcher
from zimsend.server.devicelink.session import DeviceSession
from zimsend.server.state import ServerState
from zimsend.server.storage import Database, Message, utcnow

PHONES = 1000
PEPPER = b"readiness-test-pepper-0123456789"


def queue(db: Database, client_id: str, **fields: Any) -> str:
    now = utcnow()
    message = Message(
        id=credentials.new_id("msg"),
        client_id=client_id,
        to="+33612345678",
        body="hi",
        segments=1,
        due_at=now,
        expires_at=now + dt.timedelta(hours=1),
        **fields,
    )
    with db.write() as session:
        session.add(message)
    return message.id


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the deadline is part of this call's contract
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def holders(sessions: dict[str, DeviceSession], message_id: str) -> list[str]:
    return [s.device_id for s in sessions.values() if message_id in s.in_flight]


@pytest.mark.slow
def test_idle_phones_are_not_walked_by_rounds(settings: Settings, sqlite_url: str) -> None:
    db = Database.from_url(sqlite_url)
    db.migrate()
    client = accounts.create_client(db, "fleet")
    device_ids = [
        accounts.create_device(db, PEPPER, client.id, f"p{i}", server_address="x:1").device.id
        for i in range(PHONES)
    ]
    state = ServerState(settings=settings, db=db, pepper=PEPPER)
    sessions: dict[str, DeviceSession] = {}
    config = DeviceConfig(enabled=True, send_interval_ms=0, daily_cap=None, password_hash="!")

    async def main() -> None:
        dispatcher = Dispatcher(state, sessions)
        task = asyncio.create_task(dispatcher.run())
        try:
            await until(lambda: dispatcher.rounds > 0, "the first round")
            for device_id in device_ids:
                session = DeviceSession(
                    device_id=device_id,
                    client_id=client.id,
                    connection_id="conn_" + device_id,
                    name="p",
                    config=config,
                    ready=True,
                )
                sessions[device_id] = session
                dispatcher.session_ready(session, [])
            # Connecting: every welcomed phone is looked at once.
            await until(
                lambda: all(s.dispatch_place == "idle" for s in sessions.values()),
                "every phone idle",
            )
            assert dispatcher.requests_built == PHONES

            # Polls with nothing queued: at most one idle batch of the client per round.
            built, rounds = dispatcher.requests_built, dispatcher.rounds
            await asyncio.sleep(2.5 * POLL_INTERVAL_S)
            assert dispatcher.rounds - rounds >= 2  # the poll still runs
            assert dispatcher.requests_built - built <= (dispatcher.rounds - rounds) * IDLE_BATCH

            # New work for the client: one phone takes it at once, without walking the fleet.
            built = dispatcher.requests_built
            first = queue(db, client.id)
            dispatcher.wake(client.id)
            await until(
                lambda: len(holders(sessions, first)) == 1,
                "the message on a phone",
                timeout=POLL_INTERVAL_S / 2,
            )
            assert dispatcher.requests_built - built <= 2 * IDLE_BATCH

            # Pinned to a phone beyond the idle batch: it still gets it, and nobody else does.
            last = max(
                sessions.values(), key=lambda s: (len(s.in_flight), s.next_send_at, s.dispatch_seq)
            )
            pinned = queue(db, client.id, pinned_device_id=last.device_id)
            dispatcher.wake(client.id)
            await until(
                lambda: holders(sessions, pinned) == [last.device_id],
                "the pinned message on its phone",
                timeout=POLL_INTERVAL_S / 2,
            )

            # Written without a wake-up (another replica): the poll finds it.
            unseen = queue(db, client.id)
            await until(
                lambda: len(holders(sessions, unseen)) == 1,
                "the poll's claim",
                timeout=3 * POLL_INTERVAL_S,
            )
            assert dispatcher.requests_built < PHONES + 12 * IDLE_BATCH
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await dispatcher.close()

    try:
        asyncio.run(main())
    finally:
        state.executor.shutdown()
        state.link_executor.shutdown()
        db.dispose()
