"""The trio worker in-process: fan-out, retries on the schedule, logs, graceful stop, jobs.

The HTTP side is the real guarded transport with a stub resolver and a recording connector, so
these tests open no socket; the real-process tests (test_webhook_delivery.py) use real
receivers.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _webhooks import (
    PEPPER,
    RecordingConnector,
    StubResolver,
    add_endpoint,
    add_event,
    deliveries,
    event_row,
    seed_client,
)
from sqlmodel import select

from zimsend.server.config import Settings
from zimsend.server.storage import Database, Message, OutboxEvent
from zimsend.server.webhook_delivery.sender import PER_ORIGIN, WebhookSender
from zimsend.server.webhook_delivery.transport import guarded_transport
from zimsend.server.worker import Worker, WorkerOptions

UP, DOWN, SLOW = "93.184.215.1", "93.184.215.2", "93.184.215.3"
HOSTS = {"up.example.com": [UP], "down.example.com": [DOWN], "slow.example.com": [SLOW]}
FAIL = b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "data_dir": tmp_path,
        "secret_pepper": PEPPER.decode(),
        "webhook_timeout_seconds": 0.5,
        "webhook_retry_schedule_seconds": [0, 0.2, 0.4],
    }
    values.update(overrides)
    return Settings(**values)


def run_worker(
    db: Database,
    settings: Settings,
    connector: RecordingConnector,
    until: Callable[[], bool],
    *,
    timeout: float = 20,
    stop_grace: float | None = None,
    lease: float = 5,
    max_wait: float | None = None,
    after_start: Callable[[Worker], Awaitable[None]] | None = None,
) -> Worker:
    """Run a worker until `until()` holds (checked in a thread), then stop it gracefully."""

    async def main() -> Worker:
        sender = WebhookSender(
            timeout=settings.webhook_timeout_seconds,
            allow_insecure=False,
            transport=guarded_transport(resolver=StubResolver(HOSTS), connector=connector),
            max_wait=max_wait,
        )
        options = WorkerOptions(
            poll_interval=0.05, lease_seconds=lease, stop_grace=stop_grace, expiry_interval=0.2
        )
        worker = Worker(settings, db, options, sender=sender)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            if after_start:
                await after_start(worker)
            with trio.fail_after(timeout):
                while not await trio.to_thread.run_sync(until):  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.05)
            worker.stop()
        return worker

    return trio.run(main)


def status_of(db: Database, event_id: str) -> Callable[[], bool]:
    return lambda: event_row(db, event_id).status in ("delivered", "failed")


def test_an_event_fans_out_to_every_subscribed_endpoint(db: Database, tmp_path: Path) -> None:
    client = seed_client(db)
    a = add_endpoint(db, client, "https://up.example.com/a", ["sms.delivered"])
    b = add_endpoint(db, client, "https://up.example.com/b", ["sms.delivered", "sms.sent"])
    add_endpoint(db, client, "https://up.example.com/c", ["sms.sent"])
    event_id = add_event(
        db, client, "sms.delivered", data={"message_id": "msg_1", "status": "delivered"}
    )
    connector = RecordingConnector()
    run_worker(db, make_settings(tmp_path), connector, status_of(db, event_id))
    assert event_row(db, event_id).status == "delivered"
    rows = deliveries(db, event_id)
    assert sorted(r.webhook_id or "" for r in rows) == sorted([a.endpoint.id, b.endpoint.id])
    assert all(r.success and r.attempt == 1 and r.response_status == 200 for r in rows)
    assert connector.written.count(b"POST /") == 2
    assert connector.written.count(f'"event_id":"{event_id}"'.encode()) == 2


def test_a_failing_endpoint_is_retried_on_the_schedule_then_failed(
    db: Database, tmp_path: Path
) -> None:
    client = seed_client(db)
    add_endpoint(db, client, "https://down.example.com/", ["sms.sent"])
    event_id = add_event(db, client)
    run_worker(
        db,
        make_settings(tmp_path),
        RecordingConnector(responses={DOWN: FAIL}),
        status_of(db, event_id),
    )
    row = event_row(db, event_id)
    assert row.status == "failed"
    assert row.attempts == 3
    assert "503" in (row.last_error or "")
    rows = deliveries(db, event_id)
    assert [r.attempt for r in rows] == [1, 2, 3]
    assert all(not r.success and r.response_status == 503 for r in rows)
    gaps = [(b.created_at - a.created_at).total_seconds() for a, b in itertools.pairwise(rows)]
    # The schedule's lower bounds only: a loaded machine can stretch any gap (the first one
    # ran 0.45 s against the second's 0.44 s on four busy xdist workers).
    assert gaps[0] >= 0.2
    assert gaps[1] >= 0.4


def test_only_the_failed_endpoint_is_retried(db: Database, tmp_path: Path) -> None:
    client = seed_client(db)
    up = add_endpoint(db, client, "https://up.example.com/", ["sms.sent"])
    down = add_endpoint(db, client, "https://down.example.com/", ["sms.sent"])
    event_id = add_event(db, client)
    run_worker(
        db,
        make_settings(tmp_path),
        RecordingConnector(responses={DOWN: FAIL}),
        status_of(db, event_id),
    )
    rows = deliveries(db, event_id)
    assert [r.attempt for r in rows if r.webhook_id == up.endpoint.id] == [1]
    assert [r.attempt for r in rows if r.webhook_id == down.endpoint.id] == [1, 2, 3]


def test_a_timeout_is_logged_without_a_status(db: Database, tmp_path: Path) -> None:
    client = seed_client(db)
    add_endpoint(db, client, "https://slow.example.com/", ["sms.sent"])
    event_id = add_event(db, client)
    settings = make_settings(tmp_path, webhook_retry_schedule_seconds=[0])
    run_worker(db, settings, RecordingConnector(hang={SLOW}), status_of(db, event_id))
    (row,) = deliveries(db, event_id)
    assert not row.success
    assert row.response_status is None
    assert "0.5 s" in (row.error or "")
    assert 450 <= (row.response_time_ms or 0) < 3000


def test_events_waiting_for_a_busy_receiver_are_given_back_without_spending_attempts(
    db: Database, tmp_path: Path
) -> None:
    """More events for one hanging receiver than it has turns: those that get no turn in time
    are given back, not failed unsent, so each of an event's attempts is a real POST."""
    client = seed_client(db)
    add_endpoint(db, client, "https://slow.example.com/", ["sms.sent"])
    events = [add_event(db, client) for _ in range(PER_ORIGIN + 8)]
    run_worker(
        db,
        make_settings(tmp_path),
        RecordingConnector(hang={SLOW}),
        lambda: all(event_row(db, e).status == "failed" for e in events),
        timeout=90,
        max_wait=0.1,
    )
    for event_id in events:
        rows = deliveries(db, event_id)
        assert [r.attempt for r in rows] == [1, 2, 3]
        assert all("no response within" in (r.error or "") for r in rows), rows


def test_an_event_nobody_subscribed_to_is_closed_without_attempts(
    db: Database, tmp_path: Path
) -> None:
    client = seed_client(db)
    add_endpoint(db, client, "https://up.example.com/", ["sms.delivered"])
    event_id = add_event(db, client, "sms.sent")
    connector = RecordingConnector()
    run_worker(db, make_settings(tmp_path), connector, status_of(db, event_id))
    row = event_row(db, event_id)
    assert row.status == "delivered"
    assert "no active webhook" in (row.last_error or "")
    assert deliveries(db, event_id) == []
    assert connector.connects == []


def test_a_graceful_stop_gives_unfinished_claims_back(db: Database, tmp_path: Path) -> None:
    client = seed_client(db)
    add_endpoint(db, client, "https://slow.example.com/", ["sms.sent"])
    event_id = add_event(db, client)
    settings = make_settings(tmp_path, webhook_timeout_seconds=30)
    connector = RecordingConnector(hang={SLOW})
    run_worker(db, settings, connector, lambda: bool(connector.connects), stop_grace=0.2, lease=60)
    row = event_row(db, event_id)
    assert row.status == "pending"
    assert row.attempts == 0
    assert row.claimed_by is None
    assert deliveries(db, event_id) == []


def test_the_body_is_identical_on_every_attempt(db: Database, tmp_path: Path) -> None:
    client = seed_client(db)
    add_endpoint(db, client, "https://down.example.com/", ["sms.failed"])
    data = {
        "message_id": "msg_x",
        "status": "failed",
        "message": "Olá 👋",
        "error": {"code": "NO_CREDIT", "message": "The SIM has no credit left."},
    }
    event_id = add_event(db, client, "sms.failed", data=data)
    connector = RecordingConnector(responses={DOWN: FAIL})
    run_worker(db, make_settings(tmp_path), connector, status_of(db, event_id))
    requests = connector.written.split(b"POST / HTTP/1.1")[1:]
    bodies = {r.split(b"\r\n\r\n", 1)[1] for r in requests}
    assert len(requests) == 3
    assert len(bodies) == 1
    body = json.loads(bodies.pop())
    assert body["event"] == "sms.failed"
    assert body["event_id"] == event_id
    assert body["data"] == data


def test_the_worker_expires_overdue_messages(db: Database, tmp_path: Path) -> None:
    client = seed_client(db)
    now = dt.datetime.now(dt.UTC)
    with db.write() as s:
        s.add(
            Message(
                id="msg_overdue",
                client_id=client,
                to="+33612345678",
                body="hi",
                due_at=now - dt.timedelta(hours=2),
                expires_at=now - dt.timedelta(minutes=1),
            )
        )

    def expired() -> bool:
        with db.session() as s:
            message = s.get(Message, "msg_overdue")
            return message is not None and message.status == "failed"

    run_worker(db, make_settings(tmp_path), RecordingConnector(), expired)
    with db.session() as s:
        message = s.get(Message, "msg_overdue")
        assert message is not None
        assert message.error_code == "EXPIRED"
        events = [e.event_type for e in s.exec(select(OutboxEvent))]
    assert events == ["sms.failed"]


def test_a_lease_shorter_than_the_timeout_is_refused(db: Database, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="lease"):
        Worker(
            make_settings(tmp_path, webhook_timeout_seconds=5), db, WorkerOptions(lease_seconds=6)
        )


def test_more_events_than_a_cycle_takes_are_each_delivered_once(
    db: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cycle's transaction closes and claims at most `CYCLE_MAX` events (the server's
    dispatch waits for it); the rest run in the next cycles, each event still sent once."""
    from zimsend.server.worker import runner

    cycles: list[tuple[int, int]] = []
    real = runner._write_cycle

    def recorded(db: Database, pepper: bytes, finishes: Any, **claim: Any) -> Any:
        statuses, claimed, targets = real(db, pepper, finishes, **claim)
        cycles.append((len(finishes), len(claimed)))
        return statuses, claimed, targets

    monkeypatch.setattr(runner, "_write_cycle", recorded)
    client = seed_client(db)
    add_endpoint(db, client, "https://up.example.com/", ["sms.sent"])
    events = [add_event(db, client) for _ in range(3 * runner.CYCLE_MAX + 5)]
    connector = RecordingConnector()
    run_worker(
        db,
        make_settings(tmp_path),
        connector,
        lambda: all(event_row(db, e).status == "delivered" for e in events),
        timeout=60,
    )
    for event_id in events:
        assert [r.attempt for r in deliveries(db, event_id)] == [1]
    assert connector.written.count(b"POST /") == len(events)
    assert max(max(done, taken) for done, taken in cycles) <= runner.CYCLE_MAX
    assert sum(taken for _, taken in cycles) == len(events)
