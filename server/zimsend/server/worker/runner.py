"""`Worker`: the trio program that drains the outbox and runs the periodic jobs.

Shape (one nursery each, so every task has an owner and a cancellation story):

    Worker.run
    ├── periodic jobs           expiry every few seconds, retention hourly (`jobs`)
    └── claim loop              claims due events while there is room (`max_in_flight`)
        └── one task per event  targets → concurrent POSTs → one log row each → finish
                                (one target: its log row and the finish in one transaction)

Database work is synchronous SQLAlchemy in `trio.to_thread.run_sync` with the worker's own
`CapacityLimiter` (DESIGN: trio's default limiter is shared by every thread user in the process;
ours bounds database threads alone).

Stopping: `stop()` (first Ctrl-C / SIGTERM) stops claiming and lets in-flight deliveries end —
each is bounded by the webhook timeout — for at most `stop_grace` seconds; whatever is still
running then is cancelled, and its claim is given back at once (`release_claim`, shielded from
the cancellation) instead of waiting for the lease to expire. A worker killed outright (-9)
gives nothing back: its leases expire and another worker, or the restarted one, re-claims them.
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

from zimsend.server import logs
from zimsend.server.config import Settings
from zimsend.server.storage import Database, utcnow
from zimsend.server.webhook_delivery.sender import AttemptOutcome, WebhookSender
from zimsend.server.webhook_delivery.signing import encode_body

from . import jobs
from .outbox import (
    ClaimedEvent,
    Target,
    claim_due_events,
    finish_event,
    record_attempt,
    release_claim,
    targets_of,
)

__all__ = ["Worker", "WorkerOptions"]

T = TypeVar("T")
log = logs.get("zimsend.worker")


@dataclass(frozen=True)
class WorkerOptions:
    """Tuning knobs (the CLI exposes them). `lease_seconds` defaults to
    max(30, 3 × webhook timeout) and must exceed the timeout by at least 2 s, or a slow but
    healthy delivery could be taken over and sent twice."""

    poll_interval: float = 0.5
    lease_seconds: float | None = None
    max_in_flight: int = 64
    db_threads: int = 8
    expiry_interval: float = 2.0
    retention_interval: float = 3600.0
    stop_grace: float | None = None  # default: webhook timeout + 5 s
    worker_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"
    )


class Worker:
    def __init__(
        self, settings: Settings, db: Database, options: WorkerOptions | None = None,
        *, sender: WebhookSender | None = None,
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
        self._slots = trio.Semaphore(self.options.max_in_flight)
        self._claims = 0

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Graceful stop: no new claims; in-flight deliveries get `stop_grace` to end."""
        if not self._stopping.is_set():
            log.info("worker.stopping", grace_seconds=self.stop_grace)
        self._stopping.set()

    async def db_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run blocking storage work in a thread bounded by the worker's own limiter."""
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        sender = self._sender or WebhookSender(
            timeout=self.settings.webhook_timeout_seconds,
            allow_insecure=self.settings.webhooks_allow_insecure,
        )
        async with sender, trio.open_nursery() as background:
            for job in jobs.periodic_jobs(self.settings, self.options):
                background.start_soon(jobs.run_periodically, job, self.db_call, self.database, self._stopping)
            log.info(
                "worker.started", worker_id=self.options.worker_id,
                schedule=self.settings.webhook_retry_schedule_seconds,
                lease_seconds=self.lease.total_seconds(),
            )
            task_status.started()
            await self._claim_loop(sender)
            background.cancel_scope.cancel()
        log.info("worker.stopped", worker_id=self.options.worker_id)

    async def _claim_loop(self, sender: WebhookSender) -> None:
        async with trio.open_nursery() as deliveries:
            while not self._stopping.is_set():
                room = self._slots.value
                if room == 0:
                    await self._nap(self.options.poll_interval / 5)
                    continue
                try:
                    claimed = await self.db_call(
                        claim_due_events, self.database, token=self._token(), limit=room,
                        lease=self.lease, now=utcnow(),
                    )
                except Exception:  # database down: say so, retry
                    log.exception("worker.claim_failed")
                    await self._nap(max(self.options.poll_interval, 2.0))
                    continue
                for event in claimed:
                    self._slots.acquire_nowait()
                    deliveries.start_soon(self._deliver, sender, event)
                if len(claimed) < room:
                    await self._nap(self.options.poll_interval)
            # Stopping: let in-flight deliveries finish, within the grace period.
            deliveries.cancel_scope.deadline = trio.current_time() + self.stop_grace

    def _token(self) -> str:
        self._claims += 1
        return f"{self.options.worker_id}#{self._claims}"

    async def _nap(self, seconds: float) -> None:
        with trio.move_on_after(seconds):
            await self._stopping.wait()

    async def _deliver(self, sender: WebhookSender, event: ClaimedEvent) -> None:
        finished = False
        try:
            targets = await self.db_call(targets_of, self.database, self._pepper, event)
            body = encode_body(event.event_type, event.id, event.created_at, event.data)
            outcomes: list[AttemptOutcome] = []
            # One target (the usual case): its attempt row is written with the outcome, in one
            # transaction (`finish_event`). Several: each row as soon as its POST ends, so a
            # target that answered 2xx is never sent the event again if another one hangs.
            alone = len(targets) == 1
            async with trio.open_nursery() as attempts:
                for target in targets:
                    attempts.start_soon(self._attempt, sender, event, target, body, outcomes,
                                        not alone)
            failures = [o for o in outcomes if not o.success]
            last_error: str | None
            if not targets:
                last_error = "nothing to deliver: no active webhook subscribed to this event"
            else:
                last_error = failures[0].error if failures else None
            status = await self.db_call(
                finish_event, self.database, event, remaining=len(failures), last_error=last_error,
                schedule=self.settings.webhook_retry_schedule_seconds, now=utcnow(),
                attempts=list(zip(targets, outcomes, strict=True)) if alone else (),
            )
            finished = True
            log.info(
                "webhook.attempted", event_id=event.id, event_type=event.event_type,
                client_id=event.client_id, attempt=event.attempt, targets=len(targets),
                failures=len(failures), status=status,
            )
        except Exception:  # one bad event must not stop the worker
            log.exception("webhook.delivery_crashed", event_id=event.id, attempt=event.attempt)
        finally:
            if not finished:
                with trio.CancelScope(shield=True):
                    try:
                        await self.db_call(release_claim, self.database, event, utcnow())
                    except Exception:  # the lease will expire instead
                        log.exception("webhook.release_failed", event_id=event.id)
            self._slots.release()

    async def _attempt(
        self, sender: WebhookSender, event: ClaimedEvent, target: Target, body: bytes,
        outcomes: list[AttemptOutcome], record: bool,
    ) -> None:
        if target.secret is None:
            outcome = AttemptOutcome(False, None, 0, target.problem or "no signing secret", utcnow())
        else:
            outcome = await sender.post(target.url, secret=target.secret, event_id=event.id, body=body)
        if record:
            await self.db_call(record_attempt, self.database, event, target, outcome)
        outcomes.append(outcome)
