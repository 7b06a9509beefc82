"""The command executor: hands queued SendCommands to the sender, within the device settings.

Why it outlives streams: the SIM does not need the server. A command the phone acknowledged is
sent even if the stream drops meanwhile; its reports wait in the journal for the next stream.
It does wait for the first Welcome of the process, though, so that a phone restarted with
journaled commands learns its current settings (`enabled`, pacing, cap) before sending.

Ordering and pacing: highest priority first (urgent=1 … very_low=5), then arrival order; at
most one send per `send_interval_ms` (start to start); at most `daily_cap` handoffs per UTC
day, the day the server's dispatcher counts (counted in the journal, so a restart does not
reset it); nothing while `enabled` is false, nor while the sender says it cannot send (see
health.py). Settings apply live: a DeviceSettings frame wakes the executor at once.

Giving back: a phone that stays unable to send for `give_back_after` seconds reports every
command it holds but has not begun handing to the radio as failed with a before-send code
(NO_SERVICE, SIM_MISSING, SIM_PIN_REQUIRED: `health.give_back_code`), so the server queues
those messages for another phone instead of leaving them `processing` here. Only a `queued`
journal row can be given back (`Journal.give_back`, one transaction): a command whose send
began is never reported as not sent.

Cancellation: a handoff in progress is shielded (bounded by `send_timeout`) so a shutdown never
leaves an intent without an outcome; the queue itself is durable in the journal. Between two
handoffs the loop checks for cancellation even when the next command is due at once, so a stop
finishes only the handoff in progress and leaves the rest queued for the server to re-offer.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import time
from datetime import UTC, datetime, timedelta

import trio

from zimsend.agent.health import HealthWatch, give_back_code
from zimsend.agent.journal import Journal
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import PartResult, Sender, SendRequest, SendResult, failure
from zimsend.segments import plan
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import failures_pb2

__all__ = ["Executor"]

log = logging.getLogger("zimsend.agent")

_NORMAL = 3

#: Seconds a phone may stay unable to send before it gives back the commands it holds: long
#: enough to ride out a cell handover or a SIM re-reading, short against a message's TTL.
GIVE_BACK_AFTER_S = 45.0


class Executor:
    """One sender, one queue, the device's live settings."""

    def __init__(
        self,
        journal: Journal,
        sender: Sender,
        reporter: Reporter,
        health: HealthWatch,
        *,
        send_timeout: float = 60.0,
        give_back_after: float = GIVE_BACK_AFTER_S,
    ) -> None:
        self._journal = journal
        self._sender = sender
        self._reporter = reporter
        self._health = health
        self._send_timeout = send_timeout
        self._give_back_after = give_back_after
        self.settings: pb.DeviceSettings | None = None
        # Heap of (rank, seq, message id); `_queued` holds the live command per message id, so
        # a stale heap entry (cancelled, or superseded by a new attempt) is skipped or resolved
        # to the current command.
        self._heap: list[tuple[int, int, str]] = []
        self._queued: dict[str, pb.SendCommand] = {}
        self._seq = itertools.count()
        self._changed = trio.Event()
        self._settings_changed = trio.Event()
        self._last_send: float | None = None
        self._capped_logged = False

    @property
    def depth(self) -> int:
        """Commands waiting (received, not yet handed to the SIM): Heartbeat.queue_depth."""
        return len(self._queued)

    def apply_settings(self, settings: pb.DeviceSettings) -> None:
        """Take new settings into account immediately."""
        new = pb.DeviceSettings()
        new.CopyFrom(settings)
        if self.settings != new:
            log.info(
                "settings: enabled=%s send_interval_ms=%d daily_cap=%d heartbeat=%ds",
                new.enabled,
                new.send_interval_ms,
                new.daily_cap,
                new.heartbeat_interval_seconds,
            )
        self.settings = new
        self._settings_changed.set()
        self._settings_changed = trio.Event()
        self._poke()

    async def settings_changed(self) -> None:
        """Wait until the next settings change (the heartbeat re-reads its interval)."""
        await self._settings_changed.wait()

    def enqueue(self, command: pb.SendCommand) -> None:
        """Queue a command the journal admitted (idempotent per message id)."""
        if command.message_id in self._queued:
            return
        rank = command.priority if 1 <= command.priority <= 5 else _NORMAL
        heapq.heappush(self._heap, (rank, next(self._seq), command.message_id))
        self._queued[command.message_id] = command
        self._poke()

    def discard(self, message_id: str) -> None:
        """Forget a cancelled command (its heap entry is skipped when popped)."""
        self._queued.pop(message_id, None)
        self._poke()

    async def run(self) -> None:
        """Resume the journal's queued commands, then send forever (until cancelled)."""
        for command in self._journal.queued():
            self.enqueue(command)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_health)
            nursery.start_soon(self._give_back_while_unable)
            while True:
                await trio.lowlevel.checkpoint()  # a stop lands between handoffs, not after all
                command = await self._next()
                await self._send(command)

    async def _follow_health(self) -> None:
        while True:
            await self._health.changed()
            self._poke()

    async def _give_back_while_unable(self) -> None:
        """Every `give_back_after` seconds the phone cannot send, give back what it holds."""
        while True:
            since = self._health.unable_since
            if since is None:
                await self._health.changed()
                continue
            remaining = since + self._give_back_after - trio.current_time()
            if remaining > 0:
                with trio.move_on_after(remaining):
                    await self._health.changed()
                continue
            self.give_back()
            with trio.move_on_after(self._give_back_after):
                await self._health.changed()

    def give_back(self) -> int:
        """Report every held command not yet begun as failed before sending (the health's
        code); returns how many. Synchronous: no send can begin meanwhile."""
        health = self._health.latest
        if health is None or health.can_send or not self._queued:
            return 0
        code = give_back_code(health)
        why = f"the phone could not send: {health.problem or 'no reason given'}"
        given = 0
        for mid, command in list(self._queued.items()):
            request = SendRequest(
                message_id=mid,
                to=command.to,
                body=command.body,
                parts=tuple(plan(command.body).parts),
            )
            frames = self._journal.give_back(mid, _failed(request, code, why))
            self._queued.pop(mid, None)  # given back, or begun/cancelled meanwhile
            if frames:
                self._reporter.add(frames)
                given += 1
        if given:
            log.warning("gave back %d command(s) not sent (%s): %s", given, code, why)
            self._poke()
        return given

    async def _next(self) -> pb.SendCommand:
        while True:
            changed = self._changed
            wait = self._blocked_for()
            if wait is None:
                while self._heap:
                    _, _, message_id = heapq.heappop(self._heap)
                    if (command := self._queued.pop(message_id, None)) is not None:
                        return command
                continue
            with trio.move_on_after(wait):
                await changed.wait()

    def _blocked_for(self) -> float | None:
        """None when a send may start now, else how long to wait (inf: until a change)."""
        s = self.settings
        if s is None or not s.enabled or not self._queued or not self._health.can_send:
            return math.inf
        if s.daily_cap > 0:
            midnight = _utc_midnight()
            if self._journal.sends_since(midnight.timestamp()) >= s.daily_cap:
                if not self._capped_logged:
                    log.info(
                        "daily cap of %d reached; holding %d commands until 00:00 UTC",
                        s.daily_cap,
                        self.depth,
                    )
                    self._capped_logged = True
                return max(1.0, (midnight + timedelta(days=1)).timestamp() - time.time())
        self._capped_logged = False
        if self._last_send is not None:
            remaining = self._last_send + s.send_interval_ms / 1000 - trio.current_time()
            if remaining > 0:
                return remaining
        return None

    async def _send(self, command: pb.SendCommand) -> None:
        mid = command.message_id
        if not self._journal.begin_send(mid):  # cancelled (or already handled) meanwhile
            return
        self._last_send = trio.current_time()
        parts = tuple(plan(command.body).parts)
        request = SendRequest(
            message_id=mid,
            to=command.to,
            body=command.body,
            parts=parts,
            sim_slot=command.sim_slot if command.HasField("sim_slot") else None,
        )
        log.info(
            "sending %s to %s (%d part%s)",
            mid,
            command.to,
            len(parts),
            "" if len(parts) == 1 else "s",
        )
        with trio.CancelScope(shield=True):
            result = await self._hand_off(request)
            frames = self._journal.finish_send(mid, result)
        self._reporter.add(frames)
        outcome = "sent" if result.ok else f"failed {result.parts[0].error_code}"
        log.info("message %s %s", mid, outcome)

    async def _hand_off(self, request: SendRequest) -> SendResult:
        """Call the sender; a sender that hangs or crashes yields a failed result, never a
        retry (the SMS may have left: at most once)."""
        try:
            with trio.fail_after(self._send_timeout):
                return await self._sender.send(request)
        except trio.TooSlowError:
            return _failed(
                request,
                failure(failures_pb2.TIMEOUT),
                f"sender did not answer in {self._send_timeout}s",
            )
        except Exception as exc:  # a backend bug must not kill the agent
            log.exception("sender failed on %s", request.message_id)
            return _failed(
                request, failure(failures_pb2.DEVICE_ERROR), f"{type(exc).__name__}: {exc}"
            )

    def _poke(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def _failed(request: SendRequest, code: str, message: str) -> SendResult:
    part = PartResult(False, code, message)
    return SendResult(parts=tuple(part for _ in request.parts), at=datetime.now(UTC))


def _utc_midnight() -> datetime:
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
