"""`zimsend worker`: run the trio worker until Ctrl-C / SIGTERM.

The first signal stops gracefully (no new claims, in-flight deliveries finish within the grace
period, unfinished claims are given back); a second one cancels at once. Either way the exit
status is 0. `zimsend up` starts this command as its `worker` child.
"""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path
from typing import Any

import trio

from zimsend.server import logs
from zimsend.server.config import Settings
from zimsend.server.gc_pauses import freeze_startup_objects
from zimsend.server.storage import Database
from zimsend.server.storage.availability import storage_problem

from .runner import STORAGE_CHECK_SECONDS, Worker, WorkerOptions

__all__ = ["main", "register"]


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "worker", help="deliver webhooks, expire overdue messages, apply retention (trio)"
    )
    parser.add_argument(
        "--data-dir", help="state directory (default ./.zimsend or ZIMSEND_DATA_DIR)"
    )
    parser.add_argument("--database-url", help="overrides ZIMSEND_DATABASE_URL")
    parser.add_argument(
        "--poll-interval",
        type=float,
        default=0.5,
        help="seconds between outbox polls when idle (default 0.5)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=None,
        help="how long a claimed event stays reserved (default max(30, 3 x timeout))",
    )
    parser.add_argument(
        "--max-in-flight", type=int, default=256, help="events delivered concurrently (default 256)"
    )
    parser.add_argument("--worker-id", help="name in claims and logs (default host:pid:random)")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.data_dir:
        overrides["data_dir"] = Path(args.data_dir)
    if args.database_url:
        overrides["database_url"] = args.database_url
    settings = Settings(**overrides)
    options: dict[str, Any] = {
        "poll_interval": args.poll_interval,
        "lease_seconds": args.lease_seconds,
        "max_in_flight": args.max_in_flight,
    }
    if args.worker_id:
        options["worker_id"] = args.worker_id
    logs.configure(settings.log_level)
    # httpx logs every request URL at INFO; a customer's URL may carry a token in its query.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return trio.run(main, settings, WorkerOptions(**options))


async def main(settings: Settings, options: WorkerOptions) -> int:
    from .writelock import BUSY_TIMEOUT_MS, PatientDatabase

    db = PatientDatabase.from_url(settings.database_url_value, busy_timeout_ms=BUSY_TIMEOUT_MS)
    metrics_http = None
    if settings.worker_metrics_port:
        from zimsend.server import metrics

        metrics_http = metrics.serve(
            settings.metrics_host, settings.worker_metrics_port, process="worker"
        )
    try:
        await _migrate_when_writable(db)
        worker = Worker(settings, db, options)
        freeze_startup_objects()  # short GC pauses from here on (gc_pauses)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_on_signals, signals, worker, nursery.cancel_scope)
                await worker.run()
                nursery.cancel_scope.cancel()
    finally:
        if metrics_http is not None:
            metrics_http.shutdown()
        db.dispose()
    return 0


async def _migrate_when_writable(db: Database) -> None:
    """Migrate (safe while the server migrates too); while the database cannot be written
    (disk full, read-only) wait and try again each second instead of exiting: a worker that
    crashed at every start would make `zimsend up` give up on the whole stack. The condition is
    logged once, by the database (storage.availability)."""
    while True:
        try:
            await trio.to_thread.run_sync(db.migrate)
            return
        except Exception as exc:
            if storage_problem(exc) is None:
                raise
        await trio.sleep(STORAGE_CHECK_SECONDS)


async def _on_signals(signals: Any, worker: Worker, scope: trio.CancelScope) -> None:
    async for _ in signals:
        if worker.stopping:
            scope.cancel()  # second signal: stop now
            return
        worker.stop()
