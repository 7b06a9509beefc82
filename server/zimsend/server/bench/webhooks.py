"""Scenario 7, `webhooks`: how many signed POSTs/s one worker process delivers.

The webhook stage alone, without phones or a server: the outbox is filled with `events`
`sms.delivered` events (as the producers write them, `transitions.event_row`) for one client
whose endpoint is the bench's receiver started with the endpoint's secret, so it checks both
signatures of every POST and counts distinct `event_id`s. Then one `zimsend worker` starts and
drains it. Measured between the worker's `worker.started` and the receiver having every
event: signed POSTs/s that reached the receiver, and the CPU share of the worker and of the
receiver (their sum against the machine's cores says whether the receiver could have been the
limit). Then until every outcome is written (`delivered` in the outbox): a worker that POSTs
fast but falls behind on writing its outcomes is not done.

Correctness, reported beside the rate: `event_ids` (distinct events received with valid
signatures; must be `events`), `duplicates` (POSTs beyond one per event: allowed by
at-least-once, each with its stable `event_id`), `bad_signatures` (must be 0).
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import TYPE_CHECKING, Any

from zimsend.server.bench.measure import sample
from zimsend.server.bench.stack import Stack, Tenant, receiver_stats

if TYPE_CHECKING:
    from zimsend.server.storage import Database

GOAL_RPS = 1500.0


def _database(stack: Stack) -> tuple[Database, bytes]:
    """The stack's database (SQLite in its data directory, or the PostgreSQL it was given)."""
    from zimsend.server.config import Settings
    from zimsend.server.storage import Database

    url = stack.env.get("ZIMSEND_DATABASE_URL")
    database: dict[str, Any] = {"database_url": url} if url else {}
    settings = Settings(data_dir=stack.data_dir, secret_pepper=stack.pepper, **database)
    return Database.from_url(settings.database_url_value), settings.pepper()


def fill_outbox(stack: Stack, tenant: Tenant, url: str, secret: str, events: int) -> None:
    """The endpoint (subscribed to `sms.delivered`) and `events` due outbox rows, written
    directly: setup, not measurement."""
    from sqlalchemy import insert

    from zimsend.server import webhook_endpoints
    from zimsend.server.accounts.credentials import new_id
    from zimsend.server.devicelink.transitions import event_row, iso
    from zimsend.server.storage import OutboxEvent
    from zimsend.server.storage.tables import table_of

    db, pepper = _database(stack)
    try:
        webhook_endpoints.configure(
            db,
            pepper,
            tenant.client_id,
            url=url,
            events=["sms.delivered"],
            secret=secret,
            allow_insecure=True,
        )
        now = dt.datetime.now(dt.UTC)
        stamp = iso(now)
        for start in range(0, events, 2000):
            rows = [
                event_row(
                    tenant.client_id,
                    "sms.delivered",
                    {
                        "message_id": new_id("msg"),
                        "status": "delivered",
                        "to": "+263771234567",
                        "message": "Your code is 482913",
                        "device_id": "dev_bench",
                        "metadata": {"order": str(n)},
                        "sent_at": stamp,
                        "delivered_at": stamp,
                    },
                    now=now,
                    request_id=uuid.uuid4().hex,
                )
                for n in range(start, min(events, start + 2000))
            ]
            with db.write() as session:
                session.execute(insert(table_of(OutboxEvent)), rows)
    finally:
        db.dispose()


def outbox_delivered(db: Database, client_id: str) -> int:
    from sqlalchemy import func, select

    from zimsend.server.storage import OutboxEvent, OutboxStatus
    from zimsend.server.storage.tables import table_of

    table = table_of(OutboxEvent)
    with db.session() as session:
        return int(
            session.execute(
                select(func.count())
                .select_from(table)
                .where(table.c.client_id == client_id, table.c.status == OutboxStatus.DELIVERED)
            ).scalar_one()
        )


def webhooks(stack: Stack, *, events: int, timeout: float) -> dict[str, Any]:
    from zimsend.server.accounts.credentials import new_webhook_secret

    tenant = stack.provision("bench-webhooks", 0)
    secret = new_webhook_secret()
    receiver, url = stack.start_receiver(secret, name="webhook-receiver")
    worker = None
    db, _ = _database(stack)
    try:
        fill_outbox(stack, tenant, url + "/hooks", secret, events)
        worker = stack.start_worker("webhook-worker")
        begin = receiver_stats(url)
        cpu = {"worker": sample(worker.pid), "receiver": sample(receiver.pid)}
        deadline = time.monotonic() + timeout
        stats = begin
        while stats.get("event_ids", 0) < events and time.monotonic() < deadline:
            time.sleep(0.1)
            stats = receiver_stats(url)
        end_cpu = {name: sample(s.pid) for name, s in cpu.items()}
        seconds = max(1e-9, end_cpu["worker"].at - cpu["worker"].at)
        posts = stats["posts"] - begin["posts"]
        while outbox_delivered(db, tenant.client_id) < events and time.monotonic() < deadline:
            time.sleep(0.1)
        recorded_s = time.monotonic() - cpu["worker"].at
        written = outbox_delivered(db, tenant.client_id)
        stats = receiver_stats(url)
    finally:
        stack.stop(worker)
        stack.stop(receiver)
        db.dispose()
    shares = {name: cpu[name].share_until(end_cpu[name]) for name in cpu}
    rps = round(posts / seconds, 1)
    worker_share = shares["worker"]
    complete = (
        stats.get("event_ids") == events and stats.get("bad_signatures") == 0 and written == events
    )
    return {
        "events": events,
        "rps": rps,
        "window_s": round(seconds, 2),
        "posts_in_window": posts,
        "cpu_share_of": shares,
        "worker_cpu_ms_per_post": round(1000 * worker_share * seconds / posts, 3)
        if worker_share is not None and posts
        else None,
        "all_recorded_s": round(recorded_s, 2),
        "outbox_delivered": written,
        "event_ids": stats.get("event_ids"),
        "posts": stats.get("posts"),
        "duplicates": stats.get("posts", 0) - stats.get("event_ids", 0),
        "bad_signatures": stats.get("bad_signatures"),
        "complete": complete,
        "goal": f"one worker >= {GOAL_RPS:,.0f} signed POSTs/s",
        "met": complete and rps >= GOAL_RPS,
    }
