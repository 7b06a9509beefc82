"""The dispatcher: hands due messages to the phones connected to this replica (DESIGN
"Dispatch").

One task per replica runs rounds. A round looks at the phones of this replica that may take a
message *now* — enabled, within pacing (`send_interval_ms`, default
`default_send_interval_ms`), under their daily cap and their in-flight limit — orders them least
loaded first (in-flight count, then how long they have been free), and claims atomically for
all of them in one transaction (`assignment.claim_round`: highest priority, then oldest; a
message pinned to a phone goes only to that phone). Each claimed message is pushed as a
SendCommand at once.

When does a round run? Never on a fixed delay on the hot path:
- at once when the SMS service commits a message (`state.new_work.notify`), when a phone
  connects, when a phone's report frees an in-flight slot, or when settings change;
- when the next paced phone with a backlog becomes free (pacing timer);
- at the earliest future `due_at` of a scheduled message (scheduled timer);
- every `POLL_INTERVAL_S` regardless, the fallback that notices other replicas' writes.
A slow loop inside the same task fails expired messages (`lifecycle.expire_overdue_messages`)
and messages stuck on a phone that never came back (`lifecycle.time_out_stale_processing`);
the worker will take both over.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time

from zimsend.server import logs
from zimsend.server.devicelink.assignment import ClaimRequest, RoundResult, claim_round
from zimsend.server.devicelink.lifecycle import (
    Transition,
    expire_overdue_messages,
    time_out_stale_processing,
)
from zimsend.server.devicelink.session import CommandRecord, DeviceSession
from zimsend.server.devicelink.simulated import SimulatedPhone
from zimsend.server.rpc import ServerState
from zimsend.server.storage import MessageStatus, utcnow
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["Dispatcher"]

log = logs.get("zimsend.devicelink.dispatcher")

#: Fallback polling: how late a message written by another replica may be noticed.
POLL_INTERVAL_S = 1.0
#: The round's client-independent reads (due test messages, the next scheduled due time) scan
#: every queued message, so they run at most this often; claims for ready phones run every
#: round. Without the limit each SendSms paid a scan of the whole queue (`zimsend bench`: 3.6
#: ms per round with 4,700 scheduled messages, one round per accepted message).
GLOBAL_SCAN_INTERVAL_S = 0.05
#: A connecting phone's round waits this long so that a burst of connects shares rounds: a
#: round walks every session, so one round per connect made a reconnect storm quadratic
#: (`zimsend bench`, 10,000 phones: the server never caught up).
CONNECT_ROUND_DELAY_S = 0.05
#: How often overdue queued messages are expired.
EXPIRY_INTERVAL_S = 10.0
#: Messages a phone may hold unconfirmed (no sent/failed report yet): paced and unpaced.
MAX_IN_FLIGHT_PACED = 3
MAX_IN_FLIGHT_UNPACED = 10


class Dispatcher:
    """Created by the hub's owner; `run()` is its task. Thread-safe `wake()`."""

    def __init__(self, state: ServerState, sessions: dict[str, DeviceSession]) -> None:
        self._state = state
        self._sessions = sessions  # the hub's live map: device id -> session
        self.simulated = SimulatedPhone(state)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._next_due: float | None = None
        self._next_scan = 0.0  # monotonic time the next global scan may run
        self._connect_round: asyncio.TimerHandle | None = None
        self._scan_pending = False  # a round skipped it: run one at _next_scan
        self.rounds = 0

    # --- wake-ups ----------------------------------------------------------------------------

    def wake(self, client_id: str | None = None) -> None:
        """Ask for a round now. Safe from any thread (the SMS service may call it from one)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._thread:
            self._wake.set()
        else:
            loop.call_soon_threadsafe(self._wake.set)

    def session_ready(self, session: DeviceSession, redeliver: list[pb.SendCommand]) -> None:
        """A phone was welcomed: re-offer what is still `processing` on it, then dispatch."""
        for command in redeliver:
            self.push_command(session, command)
        loop = self._loop
        if loop is None:
            return
        if self._connect_round is None:
            self._connect_round = loop.call_later(CONNECT_ROUND_DELAY_S, self._connects_round)

    def _connects_round(self) -> None:
        self._connect_round = None
        self._wake.set()

    def applied(self, session: DeviceSession, transitions: list[Transition]) -> None:
        """Reports were stored: messages that left `processing` free their slot."""
        freed = False
        for t in transitions:
            if t.new != MessageStatus.PROCESSING and t.message_id in session.in_flight:
                session.in_flight.discard(t.message_id)
                freed = True
        if freed:
            self.wake()

    def command_acked(self, session: DeviceSession, ack: pb.CommandAck) -> str | None:
        """A CommandAck arrived; returns the message id of a *refused* SendCommand (the
        caller fails it), else None."""
        record = session.commands.pop(ack.command_id, None)
        if record is None or ack.accepted or record.kind != "send":
            return None
        session.in_flight.discard(record.message_id)
        self.wake()
        return record.message_id

    def push_command(self, session: DeviceSession, command: pb.SendCommand) -> None:
        session.commands[command.command_id] = CommandRecord("send", command.message_id)
        session.in_flight.add(command.message_id)
        session.push(pb.ServerFrame(send=command))

    # --- the task ----------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        try:
            await self.simulated.resume()
        except Exception:
            log.exception("dispatcher.simulated_resume_failed")
        next_expiry = time.monotonic()
        while True:
            await self._sleep()
            try:
                await self.round(full=False)
                if time.monotonic() >= next_expiry:
                    next_expiry = time.monotonic() + EXPIRY_INTERVAL_S
                    await self._expire()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("dispatcher.round_failed")
                await asyncio.sleep(POLL_INTERVAL_S)

    async def close(self) -> None:
        await self.simulated.close()

    async def _sleep(self) -> None:
        now = time.monotonic()
        deadline = now + POLL_INTERVAL_S
        if self._next_due is not None:
            deadline = min(deadline, self._next_due)
        if self._scan_pending:
            deadline = min(deadline, self._next_scan)
        today = utcnow().date()
        for session in self._sessions.values():
            if session.backlog and self._limit(session, today) > 0:
                deadline = min(deadline, session.next_send_at)
        timeout = max(0.0, deadline - now)
        if timeout > 0 and not self._wake.is_set():
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                pass
        self._wake.clear()

    async def _expire(self) -> None:
        ttl = dt.timedelta(hours=self._state.settings.message_ttl_hours)
        count = await self._state.db_call(expire_overdue_messages, self._state.db, utcnow(),
                                          ttl=ttl)
        stale = await self._state.db_call(time_out_stale_processing, self._state.db, utcnow(),
                                          after=ttl)
        if count or stale:
            log.info("dispatcher.expired", count=count, timed_out=stale)

    # --- one round ---------------------------------------------------------------------------

    def _limit(self, session: DeviceSession, today: dt.date) -> int:
        """How many messages `session` could take once its pacing allows (0: none — not
        ready, disabled, capped for today, or its in-flight limit reached)."""
        if not session.ready or session.closed or not session.config.enabled:
            return 0
        paced = session.interval_ms(self._state.settings.default_send_interval_ms) > 0
        room = (MAX_IN_FLIGHT_PACED if paced else MAX_IN_FLIGHT_UNPACED) - len(session.in_flight)
        limit = min(1, room) if paced else room
        cap = session.cap_left(today)
        return max(0, limit if cap is None else min(limit, cap))

    def _requests(self, now_m: float, today: dt.date) -> list[tuple[DeviceSession, ClaimRequest]]:
        """The phones that may take messages now, least loaded first."""
        ready: list[tuple[tuple[int, float], DeviceSession, int]] = []
        for session in self._sessions.values():
            limit = self._limit(session, today)
            if limit > 0 and session.next_send_at <= now_m:
                ready.append(((len(session.in_flight), session.next_send_at), session, limit))
        ready.sort(key=lambda item: item[0])
        return [
            (s, ClaimRequest(client_id=s.client_id, device_id=s.device_id, limit=limit))
            for _, s, limit in ready
        ]

    async def round(self, *, full: bool = True) -> RoundResult:
        """One dispatch round (also called directly by tests). The task's own rounds pass
        `full=False`: the global scan then runs only every `GLOBAL_SCAN_INTERVAL_S`."""
        self.rounds += 1
        now = utcnow()
        now_m = time.monotonic()
        today = now.date()
        pairs = self._requests(now_m, today)
        scan = full or now_m >= self._next_scan
        result = await self._state.link_call(
            claim_round, self._state.db, self._state.pepper, [r for _, r in pairs], now,
            scan_global=scan,
        )
        if scan:
            self._next_scan = now_m + GLOBAL_SCAN_INTERVAL_S
            self._scan_pending = False
            self._next_due = None
            if result.next_due is not None:
                self._next_due = time.monotonic() + max(
                    0.0, (result.next_due - utcnow()).total_seconds()
                )
        else:
            self._scan_pending = True
        default_ms = self._state.settings.default_send_interval_ms
        for session, request in pairs:
            commands = result.commands.get(request.device_id, [])
            session.backlog = bool(commands)
            if not commands:
                continue
            sent_today = session.sent_on_day if session.sent_day == today else 0
            session.sent_day, session.sent_on_day = today, sent_today + len(commands)
            session.next_send_at = now_m + session.interval_ms(default_ms) / 1000
            if session.closed:
                continue  # stays `processing` on this phone; re-offered when it reconnects
            for command in commands:
                self.push_command(session, command)
        for device_id, (client_id, messages) in result.simulated.items():
            self.simulated.take(device_id, client_id, messages)
        if result.simulated:
            self._wake.set()  # more test messages may be waiting
        return result
