"""`Worker`: the trio program that drains the outbox and runs the periodic jobs.

Shape (one nursery each, so every task has an owner and a cancellation story):

    Worker.run
    ├── periodic jobs           expiry every few seconds, retention hourly (`jobs`)
    └── outbox loop             one write transaction per cycle: the outcomes that arrived
        │                       since the last one, and a claim for the room they leave
        └── one task per event  concurrent POSTs → its outcome to the loop → logged
                                (several targets: each attempt's log row as soon as it ends)

Why cycles (group commit, as the server does for phone reports): on SQLite every write waits
for the single write lock, which a busy server holds most of the time. One transaction per
event outcome plus one per claim made the worker the end-to-end bottleneck (`zimsend bench`:
19 webhooks/s while phones reported 64 messages/s); a cycle pays one wait for everything that
finished meanwhile, and reads the targets of everything it claimed in one read. A cycle takes
at most `CYCLE_MAX` outcomes and claims: the server's dispatch round waits (across processes,
with no priority) for every transaction the worker holds, so an unbounded cycle was part of
every message's accept → phone time, while too small a bound makes the webhook stage the
narrowest (docs/decisions.md); more simply runs as the next cycle at once.

Database work is synchronous SQLAlchemy in `trio.to_thread.run_sync` with the worker's own
`CapacityLimiter` (DESIGN: trio's default limiter is shared by every thread user in the process;
ours bounds database threads alone).

Stopping: `stop()` (first Ctrl-C / SIGTERM) stops claiming and lets in-flight deliveries end —
each is bounded by the webhook timeout — for at most `stop_grace` seconds, the loop still
writing their outcomes; whatever is still running then is cancelled, and its claim is given
back at once (`release_claim`, shielded from the cancellation) instead of waiting for the lease
to expire. A worker killed outright (-9) gives nothing back: its leases expire and another
worker, or the restarted one, re-claims them.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from zimsend.server import logs, metrics
from zimsend.server.config import Settings
from zimsend.server.storage import Database, utcnow, wakeups
from zimsend.server.webhook_delivery.sender import AttemptOutcome, WebhookSender
from zimsend.server.webhook_delivery.signing import encode_body

from . import jobs
from .outbox import (
    ClaimedEvent,
    Finish,
    Target,
    finish_and_claim,
    record_attempt,
    release_claim,
    targets_for,
)

__all__ = ["Worker", "WorkerOptions"]

T = TypeVar("T")
log = logs.get("zimsend.worker")
#: While the database cannot be written, how often the worker tries it again.
STORAGE_CHECK_SECONDS = 1.0
#: The outbox poll while PostgreSQL NOTIFYs new events (`storage.wakeups`): only a safety net
#: (and the pace at which retries that came due are noticed).
NOTIFIED_POLL_SECONDS = 2.0
#: Outcomes written and events claimed per cycle (one write transaction) at most: the bound
#: that keeps the webhook stage ahead of the phones in `zimsend bench` e2e (32 made it the
#: narrowest: docs/benchmarks.md).
CYCLE_MAX = 256


@dataclass(frozen=True)
class WorkerOptions:
    """Tuning knobs (the CLI exposes them). `lease_seconds` defaults to
    max(30, 3 × webhook timeout) and must exceed the timeout by at least 2 s, or a slow but
    healthy delivery could be taken over and sent twice."""

    poll_interval: float = 0.5
    lease_seconds: float | None = None
    max_in_flight: int = 256
    db_threads: int = 8
    expiry_interval: float = 2.0
    retention_interval: float = 3600.0
    stop_grace: float | None = None  # default: webhook timeout + 5 s
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    )


class Worker:
    def __init__(
        self,
        settings: Settings,
        db: Database,
        options: WorkerOptions | None = None,
        *,
        sender: WebhookSender | None = None,
    ) -> None:
        self.settings = settings
        self.database = db
        self.options = options or WorkerOptions()
        timeout = settings.webhook_timeout_seconds
        lease = self.options.lease_seconds or max(30.0, 3 * timeout)
        if lease < timeout + 2:
            raise ValueError(
                f"lease of {lease:g} s is too short for a {timeout:g} s webhook timeout; "
                f"use at least {timeout + 2:g} s"
            )
        self.lease = dt.timedelta(seconds=lease)
        self.stop_grace = self.options.stop_grace or timeout + 5
        self._pepper = settings.pepper()
        self._sender = sender
        self._limiter = trio.CapacityLimiter(self.options.db_threads)
        self._stopping = trio.Event()
        self._wake = trio.Event()
        self._finished: list[_Outcome] = []  # outcomes waiting for the next cycle
        self._in_flight = 0  # claimed events whose outcome is not written yet
        self._claims = 0
        self._notified = False  # NOTIFY of new events since the last `_wait`
        self._listener: wakeups.Listener | None = None

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def notified(self) -> bool:
        """PostgreSQL NOTIFYs new events to this worker now (its poll is a safety net)."""
        return self._listener is not None and self._listener.connected.is_set()

    def stop(self) -> None:
        """Graceful stop: no new claims; in-flight deliveries get `stop_grace` to end."""
        if not self._stopping.is_set():
            log.info("worker.stopping", grace_seconds=self.stop_grace)
        self._stopping.set()
        self._wake.set()

    async def db_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking storage work in a thread bounded by the worker's own limiter."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        timeout = self.settings.webhook_timeout_seconds
        sender = self._sender or WebhookSender(
            timeout=timeout,
            allow_insecure=self.settings.webhooks_allow_insecure,
            # a turn at a busy receiver + the POST must end before the lease does
            max_wait=self.lease.total_seconds() - timeout - 2,
        )
        async with sender, trio.open_nursery() as background:
            for job in jobs.periodic_jobs(self.settings, self.options):
                background.start_soon(
                    jobs.run_periodically, job, self.db_call, self.database, self._stopping
                )
            log.info(
                "worker.started",
                worker_id=self.options.worker_id,
                schedule=self.settings.webhook_retry_schedule_seconds,
                lease_seconds=self.lease.total_seconds(),
            )
            task_status.started()
            self._listener = wakeups.Listener.for_database(
                self.database,
                {
                    wakeups.OUTBOX_CHANNEL: self._notify_from_thread(
                        trio.lowlevel.current_trio_token()
                    )
                },
                name="outbox-wakeups",
            )
            try:
                await self._outbox_loop(sender)
            finally:
                if self._listener is not None:
                    await trio.to_thread.run_sync(self._listener.stop)
            background.cancel_scope.cancel()
        log.info("worker.stopped", worker_id=self.options.worker_id)

    async def _outbox_loop(self, sender: WebhookSender) -> None:
        async with trio.open_nursery() as deliveries:
            while not self._stopping.is_set():
                await self._cycle(deliveries, sender, claim=True)
            # Stopping: in-flight deliveries finish within the grace period, and their outcomes
            # are still written.
            deliveries.cancel_scope.deadline = trio.current_time() + self.stop_grace
            while self._in_flight:
                await self._cycle(deliveries, sender, claim=False)

    async def _cycle(self, deliveries: trio.Nursery, sender: WebhookSender, *, claim: bool) -> None:
        """Write the outcomes that arrived and claim for the room they leave, in one
        transaction; then wait (poll interval) unless there is more to do at once."""
        batch, self._finished = self._finished[:CYCLE_MAX], self._finished[CYCLE_MAX:]
        room = self.options.max_in_flight - self._in_flight + len(batch) if claim else 0
        room = min(room, CYCLE_MAX)
        if not batch and room <= 0:
            await self._wait(self.options.poll_interval)
            return
        if self.database.availability.problem is not None and not await self._storage_back():
            return
        for outcome in batch:
            outcome.taken = True
        try:
            statuses, claimed, targets = await self.db_call(
                _write_cycle,
                self.database,
                self._pepper,
                [o.finish for o in batch],
                schedule=self.settings.webhook_retry_schedule_seconds,
                now=utcnow(),
                token=self._token(),
                limit=room,
                lease=self.lease,
            )
        except Exception as exc:  # database down: say so; the deliveries give their claims back
            logs.failure(log, "worker.cycle_failed", exc, finishing=len(batch))
            for outcome in batch:
                outcome.failed = exc
                outcome.written.set()
            await self._nap(max(self.options.poll_interval, 2.0))
            return
        self._in_flight += len(claimed) - len(batch)
        for outcome, status in zip(batch, statuses, strict=True):
            outcome.status = status
            outcome.written.set()
        for event, event_targets in zip(claimed, targets, strict=True):
            deliveries.start_soon(self._deliver, sender, event, event_targets)
        if len(claimed) < room:
            await self._wait(self.options.poll_interval)  # nothing more due: poll

    async def _storage_back(self) -> bool:
        """While storage is full or read-only, one real check per `STORAGE_CHECK_SECONDS`
        instead of a failing cycle every poll; True once it can be written (logged then, once,
        by the database)."""
        try:
            if await self.db_call(self.database.check_storage) is None:
                return True
        except Exception as exc:  # noqa: BLE001 - not storage: say so, keep trying
            logs.failure(log, "worker.storage_check_failed", exc)
        if self._stopping.is_set():
            await trio.sleep(STORAGE_CHECK_SECONDS)  # `_nap` would return at once
        else:
            await self._nap(STORAGE_CHECK_SECONDS)
        return False

    async def _wait(self, seconds: float) -> None:
        """Until an outcome arrives, a delivery gives up its event, new events are notified
        (PostgreSQL), or `stop()`. While notifications are heard, the poll is a safety net."""
        if self._finished or self._notified:
            self._notified = False
            return
        if self.notified:
            seconds = max(seconds, NOTIFIED_POLL_SECONDS)
        self._wake = trio.Event()
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._notified = False

    def _notify_from_thread(self, token: trio.lowlevel.TrioToken) -> Callable[[str], None]:
        """The listener's callback (its thread): wake the outbox loop in trio's."""

        def notified() -> None:
            self._notified = True
            self._wake.set()

        return lambda _payload: token.run_sync_soon(notified)

    def _token(self) -> str:
        self._claims += 1
        return f"{self.options.worker_id}#{self._claims}"

    async def _nap(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._stopping.wait()

    async def _deliver(
        self, sender: WebhookSender, event: ClaimedEvent, targets: list[Target]
    ) -> None:
        outcome: _Outcome | None = None
        try:
            body = encode_body(event.event_type, event.id, event.created_at, event.data)
            outcomes: list[AttemptOutcome] = []
            # One target (the usual case): its attempt row is written with the outcome, in one
            # transaction (`finish_and_claim`). Several: each row as soon as its POST ends, so a
            # target that answered 2xx is never sent the event again if another one hangs.
            alone = len(targets) == 1
            if alone:
                await self._attempt(sender, event, targets[0], body, outcomes, False)
                if outcomes[0].busy:
                    # Its receiver's turns stayed taken as long as the lease allows: nothing
                    # was sent, so no attempt is spent; `finally` gives the event back.
                    log.info(
                        "webhook.deferred",
                        event_id=event.id,
                        attempt=event.attempt,
                        client_id=event.client_id,
                        reason=outcomes[0].error,
                    )
                    return
            else:
                async with trio.open_nursery() as attempts:
                    for target in targets:
                        attempts.start_soon(
                            self._attempt, sender, event, target, body, outcomes, True
                        )
            failures = [o for o in outcomes if not o.success]
            last_error: str | None
            if not targets:
                last_error = "nothing to deliver: no active webhook subscribed to this event"
            else:
                last_error = failures[0].error if failures else None
            outcome = _Outcome(
                Finish(
                    event,
                    remaining=len(failures),
                    last_error=last_error,
                    attempts=tuple(zip(targets, outcomes, strict=True)) if alone else (),
                )
            )
            self._finished.append(outcome)
            self._wake.set()
            await outcome.written.wait()
            if outcome.failed is not None:
                raise outcome.failed
            metrics.WEBHOOK_EVENTS.labels(_RESULTS.get(outcome.status or "", "lease_lost")).inc()
            message_id = event.data.get("message_id") if isinstance(event.data, dict) else None
            log.info(
                "webhook.attempted",
                request_id=event.request_id,
                event_id=event.id,
                event_type=event.event_type,
                message_id=message_id,
                client_id=event.client_id,
                attempt=event.attempt,
                targets=len(targets),
                failures=len(failures),
                status=outcome.status,
                outcomes=[metrics.webhook_outcome(o) for o in outcomes],
            )
        except Exception as exc:  # one bad event must not stop the worker
            logs.failure(
                log, "webhook.delivery_crashed", exc, event_id=event.id, attempt=event.attempt
            )
        finally:
            if outcome is None or not outcome.written.is_set() or outcome.failed is not None:
                if outcome is not None and not outcome.taken:
                    self._finished.remove(outcome)
                with trio.CancelScope(shield=True):
                    try:
                        await self.db_call(release_claim, self.database, event, utcnow())
                    except Exception as exc:  # the lease will expire instead
                        logs.failure(log, "webhook.release_failed", exc, event_id=event.id)
                self._in_flight -= 1
                self._wake.set()

    async def _attempt(
        self,
        sender: WebhookSender,
        event: ClaimedEvent,
        target: Target,
        body: bytes,
        outcomes: list[AttemptOutcome],
        record: bool,
    ) -> None:
        if target.secret is None:
            outcome = AttemptOutcome(
                False, None, 0, target.problem or "no signing secret", utcnow()
            )
        else:
            outcome = await sender.post(
                target.url, secret=target.secret, event_id=event.id, body=body
            )
        metrics.webhook_attempted(outcome)
        if record:
            await self.db_call(record_attempt, self.database, event, target, outcome)
        outcomes.append(outcome)


#: An event's new outbox status -> `zimsend_webhook_events_total{result}`.
_RESULTS = {"delivered": "delivered", "pending": "retrying", "failed": "failed"}


@dataclass(eq=False)
class _Outcome:
    """A delivery's finished attempt, handed to the outbox loop; `written` is set once the
    loop's transaction committed it (`status`) or failed (`failed`)."""

    finish: Finish
    written: trio.Event = field(default_factory=trio.Event)
    taken: bool = False  # in a cycle's transaction: no longer withdrawable
    status: str | None = None
    failed: Exception | None = None


def _write_cycle(
    db: Database, pepper: bytes, finishes: list[Finish], **claim: Any
) -> tuple[list[str | None], list[ClaimedEvent], list[list[Target]]]:
    """One cycle's database work, in one thread: the transaction, then the claimed events'
    targets (a read)."""
    statuses, claimed = finish_and_claim(db, finishes, **claim)
    return statuses, claimed, targets_for(db, pepper, claimed)
