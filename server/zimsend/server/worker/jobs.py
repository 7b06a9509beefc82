"""The worker's periodic jobs: message expiry and the missing-delivery-report flag (every few
seconds), and retention (hourly).

Each job is a plain synchronous function of (database, now) run in a thread; a failing run is
logged and the job tries again at its next tick — one bad run must not stop webhook delivery.
Both jobs are safe with several workers (and with the server's own dispatcher sweeping expiry
too): they re-check every row under the write lock.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from zimsend.server import logs
from zimsend.server.config import Settings
from zimsend.server.storage import Database, utcnow

from .retention import purge_expired

if TYPE_CHECKING:
    from .runner import WorkerOptions

__all__ = ["PeriodicJob", "periodic_jobs", "run_periodically"]

log = logs.get("zimsend.worker.jobs")
DbCall = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class PeriodicJob:
    name: str
    interval: float
    run: Callable[[Database, dt.datetime], Any]


def periodic_jobs(settings: Settings, options: WorkerOptions) -> list[PeriodicJob]:
    from zimsend.server.devicelink.budgets import prune_ledger
    from zimsend.server.devicelink.transitions import (
        expire_overdue_messages,
        flag_missing_delivery_reports,
    )

    ttl = dt.timedelta(hours=settings.message_ttl_hours)
    return [
        PeriodicJob(
            "expiry",
            options.expiry_interval,
            functools.partial(_expire, expire_overdue_messages, ttl=ttl),
        ),
        PeriodicJob(
            "delivery_report_missing",
            options.expiry_interval,
            functools.partial(
                flag_missing_delivery_reports,
                after=dt.timedelta(hours=settings.delivery_report_timeout_hours),
            ),
        ),
        PeriodicJob("send_ledger", options.retention_interval, prune_ledger),
        PeriodicJob(
            "retention",
            options.retention_interval,
            functools.partial(_retention, retention_days=settings.retention_days),
        ),
    ]


def _expire(
    expire: Callable[..., int], db: Database, now: dt.datetime, *, ttl: dt.timedelta
) -> int:
    from zimsend.server.failures import EXPIRED
    from zimsend.server.metrics import MESSAGES_FAILED

    expired = expire(db, now, ttl=ttl)
    MESSAGES_FAILED.labels(EXPIRED).inc(expired)
    return expired


def _retention(db: Database, now: dt.datetime, *, retention_days: int) -> dict[str, int]:
    return purge_expired(db, now, retention_days=retention_days)


async def run_periodically(
    job: PeriodicJob, db_call: DbCall, database: Database, stopping: trio.Event
) -> None:
    """Run `job` now and then every `job.interval` seconds until `stopping` is set."""
    while not stopping.is_set():
        try:
            result = await db_call(job.run, database, utcnow())
        except Exception as exc:  # logged (a storage problem once); the next tick tries again
            logs.failure(log, "job.failed", exc, job=job.name)
        else:
            if result and (not isinstance(result, dict) or any(result.values())):
                log.info("job.done", job=job.name, result=result)
        with trio.move_on_after(job.interval):
            await stopping.wait()
