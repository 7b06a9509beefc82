"""The dispatcher: hands due messages to the phones connected to this replica (DESIGN
"Dispatch").

One task per replica runs rounds. A round claims for the phones of this replica that may take a
message *now* — enabled, within pacing (`send_interval_ms`, default
`default_send_interval_ms`), under their daily cap and their in-flight limit — least loaded
first (in-flight count, then how long they have been free), atomically in one transaction
(`assignment.claim_round`: highest priority, then oldest; a message pinned to a phone goes only
to that phone). Each claimed message is pushed as a SendCommand at once.

Which phones a round looks at is kept by events (`Readiness`), not found by walking every
session: with 3,000–10,000 phones connected the walk was half of the server's CPU
(`zimsend bench`, streams). A phone is looked at when it is welcomed, when a report frees one
of its slots, when its settings change, when a heartbeat says it can send again (one saying it
cannot makes the next round block it: `DeviceSession.cannot_send_reason`), when its pacing
timer expires after a full claim, or —
if its last claim came back short ("idle") — when its client has new work (least loaded idle
phones first, `IDLE_BATCH` per round, more while their claims come back full).

When does a round run? Never on a fixed delay on the hot path:
- at once when the SMS service commits a message (`state.new_work` -> `wake(client_id)`), when
  a phone's report frees an in-flight slot, or when settings change; `CONNECT_ROUND_DELAY_S`
  after a phone connects (a burst of connects shares one round);
- when the next paced phone becomes free (a heap of pacing timers);
- at the earliest future `due_at` of a scheduled message (scheduled timer);
- when another replica queued work for a client (PostgreSQL NOTIFY, `storage.wakeups`: the
  hub's listener calls `wake(client_id)`);
- every `POLL_INTERVAL_S` regardless, the safety net for missed notifications (and the only
  cross-process wake-up on SQLite): it wakes every client with idle phones here.
A slow loop beside the rounds (a task of its own: rounds never wait for it) fails expired
messages (`transitions.expire_overdue_messages`) and messages stuck on a phone that never came
back (`transitions.time_out_stale_processing`), and flags `sent` messages whose delivery report
never came (`transitions.flag_missing_delivery_reports`, the worker runs it too).

Send budgets and cool-downs (issue 16 item 5, `budgets.py`) are checked inside the claim,
from the database; a phone whose claim they stopped is paced until they allow more
(`RoundResult.waits`), not idled, and its client is not taken for drained.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import threading
import time
from collections.abc import Iterable

from zimsend.server import failures, logs, metrics
from zimsend.server.devicelink.assignment import (
    ClaimRequest,
    GlobalScan,
    RoundResult,
    claim_round,
)
from zimsend.server.devicelink.budgets import Budget
from zimsend.server.devicelink.session import CommandRecord, DeviceSession
from zimsend.server.devicelink.simulated import SimulatedPhone
from zimsend.server.devicelink.transitions import (
    Transition,
    expire_overdue_messages,
    flag_missing_delivery_reports,
    time_out_stale_processing,
)
from zimsend.server.state import ServerState
from zimsend.server.storage import MessageStatus, utcnow
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["Dispatcher", "Readiness"]

log = logs.get("zimsend.devicelink.dispatcher")

#: Fallback polling: how late a message written by another replica may be noticed.
POLL_INTERVAL_S = 1.0
#: The round's client-independent reads (the next scheduled due time, the clients whose
#: scheduled messages just became due) run at most this often; claims run every round.
GLOBAL_SCAN_INTERVAL_S = 0.05
#: A connecting phone's round waits this long so that a burst of connects shares rounds (one
#: read, one transaction) instead of one round per connect.
CONNECT_ROUND_DELAY_S = 0.05
#: Idle phones of a woken client a round claims for, least loaded first; the next round takes
#: the next ones while every claim comes back full. A client with thousands of idle phones and
#: one new message costs one claim, not thousands of requests.
IDLE_BATCH = 64
#: How often overdue queued messages are expired.
EXPIRY_INTERVAL_S = 10.0
#: Messages a phone may hold unconfirmed (no sent/failed report yet): paced and unpaced.
MAX_IN_FLIGHT_PACED = 3
MAX_IN_FLIGHT_UNPACED = 10


class Readiness:
    """Where each phone waits between rounds, so that a round looks only at the phones whose
    state changed.

    A session is in one place at a time (`session.dispatch_place`):
    - ready: look at it in the next round (welcomed, slot freed, settings, client woken);
    - paced: its last claim was full; it may take more when its pacing timer expires (one heap
      of timers for all phones, so finding the next timer walks no session);
    - idle: its last claim came back short, so nothing is due for it until its client has new
      work (a heap per client, least loaded first);
    - blocked: it may take nothing now (in-flight limit, daily cap, disabled, its heartbeat
      says it cannot send): a freed slot, a settings change, a heartbeat saying it can send
      again or the next UTC day makes it ready;
    - claiming: in the round running now.
    Heap entries are dropped lazily: every move gives the session a new `dispatch_seq`, and an
    entry with an older one is stale. Closed sessions are forgotten when met.
    """

    def __init__(self) -> None:
        self._seq = 0
        self._ready: dict[DeviceSession, None] = {}
        self._timers: list[tuple[float, int, DeviceSession]] = []
        self._idle: dict[str, list[tuple[int, float, int, DeviceSession]]] = {}
        self._idle_entries = 0

    def _move(self, session: DeviceSession, place: str) -> int:
        self._seq += 1
        session.dispatch_place, session.dispatch_seq = place, self._seq
        return self._seq

    def make_ready(self, session: DeviceSession) -> None:
        self._move(session, "ready")
        self._ready[session] = None

    def pace(self, session: DeviceSession) -> None:
        seq = self._move(session, "paced")
        heapq.heappush(self._timers, (session.free_at, seq, session))

    def idle(self, session: DeviceSession) -> None:
        seq = self._move(session, "idle")
        entry = (len(session.in_flight), session.next_send_at, seq, session)
        heapq.heappush(self._idle.setdefault(session.client_id, []), entry)
        self._idle_entries += 1

    def block(self, session: DeviceSession) -> None:
        self._move(session, "blocked")

    def idle_clients(self) -> list[str]:
        return list(self._idle)

    def next_timer(self) -> float | None:
        """The monotonic time of the earliest pacing timer (stale entries are dropped)."""
        timers = self._timers
        while timers and self._stale(timers[0][1], timers[0][2], "paced"):
            heapq.heappop(timers)
        return timers[0][0] if timers else None

    def take(self, now_m: float, woken: Iterable[str]) -> list[DeviceSession]:
        """The sessions for this round: every ready one, every paced one whose timer expired,
        and up to `IDLE_BATCH` idle ones of each woken client; each is now "claiming"."""
        taken = list(self._ready)
        self._ready.clear()
        timers = self._timers
        while timers and timers[0][0] <= now_m:
            _, seq, session = heapq.heappop(timers)
            if not self._stale(seq, session, "paced"):
                taken.append(session)
        for client_id in woken:
            heap = self._idle.get(client_id)
            count = 0
            while heap and count < IDLE_BATCH:
                *_, seq, session = heapq.heappop(heap)
                self._idle_entries -= 1
                if not self._stale(seq, session, "idle"):
                    taken.append(session)
                    count += 1
            if heap is not None and not heap:
                del self._idle[client_id]
        for session in taken:
            self._move(session, "claiming")
        return taken

    def has_idle(self, client_id: str) -> bool:
        return bool(self._idle.get(client_id))

    def compact(self, live: int) -> None:
        """Drop stale idle entries once they outnumber the live sessions (amortised: each
        entry is dropped once)."""
        if self._idle_entries <= 2 * live + IDLE_BATCH:
            return
        for client_id, heap in list(self._idle.items()):
            heap[:] = [e for e in heap if not self._stale(e[2], e[3], "idle")]
            heapq.heapify(heap)
            if not heap:
                del self._idle[client_id]
        self._idle_entries = sum(len(h) for h in self._idle.values())

    @staticmethod
    def _stale(seq: int, session: DeviceSession, place: str) -> bool:
        return session.closed or session.dispatch_seq != seq or session.dispatch_place != place


class Dispatcher:
    """Created by the hub's owner; `run()` is its task. Thread-safe `wake()`."""

    def __init__(self, state: ServerState, sessions: dict[str, DeviceSession]) -> None:
        self._state = state
        self._sessions = sessions  # the hub's live map: device id -> session
        self.simulated = SimulatedPhone(state)
        self._queue = Readiness()
        self._woken: set[str] = set()  # clients with new work since the last round
        self._walk_all = False  # the next round looks at every session (`wake()` unspecific)
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: int | None = None
        self._next_due: float | None = None
        self._next_scan = 0.0  # monotonic time the next global scan may run
        self._scanned_at: dt.datetime | None = None  # `now` of the last global scan
        self._next_poll = 0.0
        self._day: dt.date | None = None
        self._connect_round: asyncio.TimerHandle | None = None
        self._scan_pending = False  # a round skipped it: run one at _next_scan
        self.rounds = 0
        #: ClaimRequests built over all rounds: what a round costs grows with this (tests).
        self.requests_built = 0

    # --- wake-ups ----------------------------------------------------------------------------

    def wake(self, client_id: str | None = None) -> None:
        """Ask for a round now: `client_id` has new work (its idle phones are looked at), or
        without it, something unspecified changed (every phone is looked at once). Safe from
        any thread (the SMS service may call it from one)."""
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._thread:
            self._woken_by(client_id)
        else:
            loop.call_soon_threadsafe(self._woken_by, client_id)

    def _woken_by(self, client_id: str | None) -> None:
        if client_id is None:
            self._walk_all = True
        else:
            self._woken.add(client_id)
        self._wake.set()

    def _ready_now(self, session: DeviceSession) -> None:
        self._queue.make_ready(session)
        self._wake.set()

    def settings_changed(self, session: DeviceSession) -> None:
        """The hub applied new settings to `session` (pacing, cap, enabled, budget): its next
        claim re-reads its budget and cool-down."""
        session.held_until = 0.0
        self._ready_now(session)

    def can_send_changed(self, session: DeviceSession) -> None:
        """A heartbeat changed `session.cannot_send_reason`. Cleared: the phone takes messages
        again at once. Set: nothing to do now — its next round finds it unable (`_limit`) and
        blocks it; what it already holds stays with it (the agent sends once it can)."""
        if not session.cannot_send_reason:
            self._ready_now(session)

    def session_ready(self, session: DeviceSession, redeliver: list[pb.SendCommand]) -> None:
        """A phone was welcomed: re-offer what is still `processing` on it, then dispatch."""
        for command in redeliver:
            self.push_command(session, command)
        self._queue.make_ready(session)
        loop = self._loop
        if loop is None:
            return
        if self._connect_round is None:
            self._connect_round = loop.call_later(CONNECT_ROUND_DELAY_S, self._connects_round)

    def _connects_round(self) -> None:
        self._connect_round = None
        self._wake.set()

    def applied(self, session: DeviceSession, transitions: list[Transition]) -> None:
        """Reports were stored: messages that left `processing` free their slot; a failure
        before sending cools the phone down (it is paced until then; the claim checks the
        stored cool-down too) and a re-routed message is new work for its client."""
        freed = requeued = False
        for t in transitions:
            if t.new != MessageStatus.PROCESSING and t.message_id in session.in_flight:
                session.in_flight.discard(t.message_id)
                freed = True
            if t.cooldown_s > 0:
                session.held_until = max(session.held_until, time.monotonic() + t.cooldown_s)
            requeued = requeued or t.new == MessageStatus.QUEUED
        if freed:
            self._ready_now(session)
        if requeued:
            self._woken_by(session.client_id)

    def command_acked(self, session: DeviceSession, ack: pb.CommandAck) -> str | None:
        """A CommandAck arrived; returns the message id of a *refused* SendCommand (the
        caller fails it), else None."""
        record = session.commands.pop(ack.command_id, None)
        if record is None or ack.accepted or record.kind != "send":
            return None
        session.in_flight.discard(record.message_id)
        self._ready_now(session)
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
        except Exception as exc:
            logs.failure(log, "dispatcher.simulated_resume_failed", exc)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._expiry_loop())
            while True:
                await self._sleep()
                try:
                    await self.round()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    logs.failure(log, "dispatcher.round_failed", exc)
                    await asyncio.sleep(POLL_INTERVAL_S)

    async def _expiry_loop(self) -> None:
        """`_expire` every `EXPIRY_INTERVAL_S`, beside the rounds: a pass is three write
        transactions over the queue (240 ms once under `zimsend bench`), and while rounds
        waited for it every message accepted meanwhile waited too. Never raises."""
        while True:
            try:
                await self._expire()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logs.failure(log, "dispatcher.expiry_failed", exc)
            await asyncio.sleep(EXPIRY_INTERVAL_S)

    async def close(self) -> None:
        await self.simulated.close()

    async def _sleep(self) -> None:
        """Until a wake-up, the next pacing timer, the scheduled timer or the poll."""
        deadline = self._next_poll
        for at in (
            self._next_due,
            self._queue.next_timer(),
            self._next_scan if self._scan_pending else None,
        ):
            if at is not None:
                deadline = min(deadline, at)
        timeout = deadline - time.monotonic()
        if timeout > 0 and not self._wake.is_set():
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancellation
            # that arrives as the event is set, and this loop then outlives the hub's shutdown
            # (a SIGTERM'd server under load never exited; tests/test_faults.py).
            try:
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
            except TimeoutError:
                pass
        self._wake.clear()

    async def _expire(self) -> None:
        ttl = dt.timedelta(hours=self._state.settings.message_ttl_hours)
        count = await self._state.db_call(
            expire_overdue_messages, self._state.db, utcnow(), ttl=ttl
        )
        stale = await self._state.db_call(
            time_out_stale_processing, self._state.db, utcnow(), after=ttl
        )
        hours = self._state.settings.delivery_report_timeout_hours
        flagged = await self._state.db_call(
            flag_missing_delivery_reports, self._state.db, utcnow(), after=dt.timedelta(hours=hours)
        )
        if flagged:
            log.info("dispatcher.delivery_reports_missing", count=flagged)
        if count or stale:
            metrics.MESSAGES_FAILED.labels(failures.EXPIRED).inc(count)
            metrics.MESSAGES_FAILED.labels(failures.TIMEOUT).inc(stale)
            log.info("dispatcher.expired", count=count, timed_out=stale)

    # --- one round ---------------------------------------------------------------------------

    def _limit(self, session: DeviceSession, today: dt.date) -> int:
        """How many messages `session` could take once its pacing allows (0: none — not
        ready, disabled, unable to send (its heartbeat says why), capped for today, or its
        in-flight limit reached)."""
        if (
            not session.ready
            or session.closed
            or not session.config.enabled
            or session.cannot_send_reason
        ):
            return 0
        paced = session.interval_ms(self._state.settings.default_send_interval_ms) > 0
        room = (MAX_IN_FLIGHT_PACED if paced else MAX_IN_FLIGHT_UNPACED) - len(session.in_flight)
        limit = min(1, room) if paced else room
        cap = session.cap_left(today)
        return max(0, limit if cap is None else min(limit, cap))

    def _poll(self, now_m: float, today: dt.date) -> None:
        """The fallback: every client with idle phones here is woken (another replica may have
        queued work for it); on a new UTC day every phone is looked at (daily caps reset)."""
        self._next_poll = now_m + POLL_INTERVAL_S
        self._woken.update(self._queue.idle_clients())
        if today != self._day:
            self._day, self._walk_all = today, True
        self._queue.compact(len(self._sessions))

    def _requests(
        self, now_m: float, today: dt.date, woken: set[str]
    ) -> list[tuple[DeviceSession, ClaimRequest]]:
        """The phones to claim for now, least loaded first. The others taken from the queue
        wait for their pacing timer, or are blocked until a slot, a setting or a day frees
        them."""
        if self._walk_all:
            self._walk_all = False
            for session in self._sessions.values():
                self._queue.make_ready(session)
        ready: list[tuple[tuple[int, float], DeviceSession, int]] = []
        for session in self._queue.take(now_m, woken):
            if self._sessions.get(session.device_id) is not session:
                continue  # gone (its heap entries are stale too)
            limit = self._limit(session, today)
            if limit <= 0:
                self._queue.block(session)
            elif session.free_at > now_m:
                self._queue.pace(session)
            else:
                ready.append(((len(session.in_flight), session.next_send_at), session, limit))
        ready.sort(key=lambda item: item[0])
        self.requests_built += len(ready)
        return [
            (s, ClaimRequest(client_id=s.client_id, device_id=s.device_id, limit=limit))
            for _, s, limit in ready
        ]

    async def round(self) -> RoundResult:
        """One dispatch round over the phones whose state changed (see `Readiness`)."""
        self.rounds += 1
        now = utcnow()
        now_m = time.monotonic()
        today = now.date()
        poll = now_m >= self._next_poll
        if poll:
            self._poll(now_m, today)
        woken, self._woken = self._woken, set()
        pairs = self._requests(now_m, today, woken)
        scan = None
        if poll or now_m >= self._next_scan:
            scan = GlobalScan(since=self._scanned_at, test_clients=poll)
        settings = self._state.settings
        budgets = Budget(
            settings.default_parts_per_minute,
            settings.default_parts_per_hour,
            settings.default_parts_per_day,
        )
        result = await self._state.link_call(
            claim_round,
            self._state.db,
            self._state.pepper,
            [r for _, r in pairs],
            now,
            woken=sorted(woken),
            scan=scan,
            budgets=budgets,
            default_interval_ms=settings.default_send_interval_ms,
        )
        if scan is not None:
            self._note_scan(now, now_m, result)
        else:
            self._scan_pending = True
        self._settle(pairs, result, now_m, today, woken)
        for device_id, (client_id, messages) in result.simulated.items():
            self.simulated.take(device_id, client_id, messages)
            now = utcnow()
            for m in messages:
                latency = metrics.dispatched(m.due_at, now)
                log.info(
                    "sms.dispatched",
                    request_id=m.request_id,
                    message_id=m.id,
                    device_id=device_id,
                    client_id=client_id,
                    simulated=True,
                    latency_ms=round(latency * 1000, 1),
                )
            self._woken_by(client_id)  # more test messages may be waiting
        return result

    def _dispatched(
        self, session: DeviceSession, commands: list[pb.SendCommand], result: RoundResult
    ) -> None:
        """Dispatch latency and one log line per command pushed (with the message's request
        id, which the accept logged)."""
        now = utcnow()
        for command in commands:
            origin = result.origins.get(command.message_id)
            if origin is None:
                continue
            due_at, request_id = origin
            latency = metrics.dispatched(due_at, now)
            log.info(
                "sms.dispatched",
                request_id=request_id,
                message_id=command.message_id,
                device_id=session.device_id,
                client_id=session.client_id,
                latency_ms=round(latency * 1000, 1),
            )

    def _note_scan(self, now: dt.datetime, now_m: float, result: RoundResult) -> None:
        self._scanned_at = now
        self._next_scan = now_m + GLOBAL_SCAN_INTERVAL_S
        self._scan_pending = False
        self._next_due = None
        if result.next_due is not None:
            self._next_due = time.monotonic() + max(
                0.0, (result.next_due - utcnow()).total_seconds()
            )
        for client_id in result.became_due:
            self._woken_by(client_id)

    def _settle(
        self,
        pairs: list[tuple[DeviceSession, ClaimRequest]],
        result: RoundResult,
        now_m: float,
        today: dt.date,
        woken: set[str],
    ) -> None:
        """Push what was claimed and put every phone of the round in its next place."""
        default_ms = self._state.settings.default_send_interval_ms
        short: set[str] = set()  # clients with nothing more due for their next phones
        for session, request in pairs:
            commands = result.commands.get(request.device_id, [])
            wait = result.waits.get(request.device_id)  # over budget or cooling down
            if len(commands) < request.limit and wait is None:
                short.add(request.client_id)
            if commands:
                sent_today = session.sent_on_day if session.sent_day == today else 0
                session.sent_day, session.sent_on_day = today, sent_today + len(commands)
                session.next_send_at = now_m + session.interval_ms(default_ms) / 1000
                if session.closed:
                    continue  # stays `processing` on this phone; re-offered when it reconnects
                # A heartbeat may have said "cannot send" while this claim ran: the messages are
                # this phone's now and go to it anyway (its agent holds them until it can send).
                for command in commands:
                    self.push_command(session, command)
                self._dispatched(session, commands, result)
            if wait is not None:
                session.held_until = max(session.held_until, now_m + wait)
            if session.dispatch_place != "claiming":
                continue  # readied again while the claim ran (a slot freed, new settings)
            if wait is not None:
                self._queue.pace(session)  # its timer: when the budget or cool-down allows
            elif len(commands) < request.limit:
                self._queue.idle(session)
            elif self._limit(session, today) > 0:
                self._queue.pace(session)  # unpaced: its timer is now, the next round
            else:
                self._queue.block(session)
        in_round = {request.device_id for _, request in pairs}
        for device_id in result.pinned - in_round:
            pinned = self._sessions.get(device_id)
            if pinned is not None and pinned.dispatch_place == "idle":
                self._ready_now(pinned)  # pinned work beyond the idle batch of its client
        for client_id in woken - short:
            if self._queue.has_idle(client_id):
                self._woken_by(client_id)  # every claim was full: the next idle phones
