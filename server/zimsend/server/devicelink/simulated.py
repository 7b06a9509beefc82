"""The built-in simulated phone behind `zs_test_` keys (SPEC §2, a sandbox like Stripe's).

Why inside the server: a test key must work with no phone at all, and its messages must never
reach one. The dispatcher claims a client's test messages for that client's simulated device
(live phones never claim test messages); this class then "sends" them after a short delay and
reports `sent`, then `delivered`, through the same `transitions.apply_part_reports` a real phone's
reports go through (one call per batch: one statement per kind, not one unit of work per
message) — so statuses, timestamps, `sms.*` events and daily counts behave exactly
as they would with a phone. It does not pace: a sandbox should not make a test suite wait
2.5 s per message.

Crash safety: messages it had taken stay `processing` on the simulated device; `resume()` (at
startup) picks them up again. Its report ids are deterministic, so finishing a message twice
(two replicas) changes nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from sqlalchemy import select
from sqlmodel import col

from zimsend.server import logs
from zimsend.server.devicelink.reports import applied
from zimsend.server.devicelink.transitions import (
    Outcome,
    PartReport,
    Transition,
    apply_part_reports,
)
from zimsend.server.state import ServerState
from zimsend.server.storage import Database, Device, Message, MessageStatus, utcnow
from zimsend.server.storage.claims import ClaimedMessage

__all__ = ["SimulatedPhone"]

log = logs.get("zimsend.devicelink.simulated")


class SimulatedPhone:
    """All simulated devices of this replica (one per client, created on demand)."""

    def __init__(
        self, state: ServerState, *, send_delay: float = 0.2, delivery_delay: float = 0.5
    ) -> None:
        self._state = state
        self.send_delay = send_delay
        self.delivery_delay = delivery_delay
        self._tasks: set[asyncio.Task[None]] = set()
        self._taken: set[str] = set()

    def take(
        self, device_id: str, client_id: str, messages: Sequence[Message | ClaimedMessage]
    ) -> None:
        """Simulate sending these claimed test messages (one task per batch)."""
        fresh = [m for m in messages if m.id not in self._taken]
        if not fresh:
            return
        self._taken.update(m.id for m in fresh)
        task = asyncio.create_task(self._simulate(device_id, client_id, fresh))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Take back test messages a previous run left `processing` (crash, restart)."""
        pending = await self._state.db_call(_processing_on_simulated, self._state.db)
        for (device_id, client_id), messages in pending.items():
            self.take(device_id, client_id, messages)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _simulate(
        self, device_id: str, client_id: str, messages: Sequence[Message | ClaimedMessage]
    ) -> None:
        try:
            await asyncio.sleep(self.send_delay)
            await self._report(device_id, client_id, messages, "sent")
            await asyncio.sleep(self.delivery_delay)
            await self._report(device_id, client_id, messages, "delivered")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logs.failure(log, "simulated.failed", exc, device_id=device_id)
        finally:
            self._taken.difference_update(m.id for m in messages)

    async def _report(
        self,
        device_id: str,
        client_id: str,
        messages: Sequence[Message | ClaimedMessage],
        outcome: Outcome,
    ) -> list[Transition]:
        letter = outcome[0].upper()
        reports = [
            PartReport(
                report_id=f"sim.{m.id}.{m.attempts}.{letter}", message_id=m.id, outcome=outcome
            )
            for m in messages
        ]
        moved = await self._state.link_call(_apply, self._state.db, client_id, device_id, reports)
        applied(moved, device_id)
        return moved


def _apply(
    db: Database, client_id: str, device_id: str, reports: list[PartReport]
) -> list[Transition]:
    with db.write() as session:
        return apply_part_reports(
            session, [(client_id, device_id, report) for report in reports], now=utcnow()
        )


def _processing_on_simulated(db: Database) -> dict[tuple[str, str], list[Message]]:
    with db.session() as session:
        rows = session.execute(
            select(Message, col(Device.id), col(Device.client_id))
            .join(Device, col(Device.id) == col(Message.device_id))
            .where(
                col(Device.is_simulated).is_(True),
                col(Message.status).in_([MessageStatus.PROCESSING, MessageStatus.SENT]),
            )
        ).all()
    out: dict[tuple[str, str], list[Message]] = {}
    for message, device_id, client_id in rows:
        out.setdefault((device_id, client_id), []).append(message)
    return out
