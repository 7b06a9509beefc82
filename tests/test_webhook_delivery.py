"""Webhooks end to end (SPEC §7, issue "Webhooks"): a real `zimsend serve`, real `zimsend
worker` processes, and receivers written from the FAQ's Node.js snippet run with `node`.

The module's worker runs a shortened schedule (`ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS=[0,1,2]`,
1 s timeout); the default stays 0 / 60 / 300 s (last test). Receivers listen on 127.0.0.1 and
the development setting allows it (`ZIMSEND_WEBHOOKS_ALLOW_INSECURE=1`), except in the test
that proves private addresses are refused.
"""

from __future__ import annotations

import datetime as dt
import json
import signal
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from _processes import Program, free_port, start_server
from _processes import zimsend_env as make_env
from _receivers import Receiver, body_of, start_worker, verify_standard, wait_until
from _sms import Account, new_account
from _webhooks import add_event, deliveries, event_row, seed_client
from conftest import RunningServer

from zimsend.server import webhook_endpoints
from zimsend.server.config import Settings
from zimsend.server.storage import Database
from zimsend.v1 import sms_pb2, sms_pb2_grpc
from zimsend.v1 import webhooks_pb2 as pb
from zimsend.v1 import webhooks_pb2_grpc as pb_grpc

pytestmark = pytest.mark.slow
TEST_PEPPER = "test-pepper-not-secret-0123456789"
SHORT = {
    "ZIMSEND_WEBHOOKS_ALLOW_INSECURE": "1",
    "ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS": "[0,1,2]",
    "ZIMSEND_WEBHOOK_TIMEOUT_SECONDS": "1",
}


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_env(tmp_path_factory.mktemp("zimsend-data"), TEST_PEPPER, **SHORT)


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("webhook-logs")


@pytest.fixture(scope="module")
def worker(server: RunningServer, zimsend_env: dict[str, str], logs_dir: Path) -> Iterator[Program]:
    with start_worker(zimsend_env, logs_dir, "module-worker", "--lease-seconds", "4") as program:
        yield program


@pytest.fixture(scope="module")
def webhooks(server: RunningServer) -> Iterator[pb_grpc.WebhookServiceStub]:
    _, address = server
    with grpc.insecure_channel(address) as channel:
        yield pb_grpc.WebhookServiceStub(channel)


@pytest.fixture
def account(server_db: Database) -> Account:
    return new_account(server_db, TEST_PEPPER.encode(), "webhook-tests")


def isolated(
    tmp_path_factory: pytest.TempPathFactory, **extra: str
) -> tuple[dict[str, str], Database, str]:
    """A database of its own (no server, no module worker): for tests that run their own
    workers and must not share events with the module's."""
    data_dir = tmp_path_factory.mktemp("own-data")
    env = make_env(data_dir, TEST_PEPPER, **{**SHORT, **extra})
    db = Database.from_url(f"sqlite:///{data_dir / 'zimsend.db'}")
    db.migrate()
    return env, db, seed_client(db)


def configure(webhooks: Any, account: Any, url: str, events: list[str], secret: str = "") -> Any:
    return webhooks.ConfigureWebhook(
        pb.ConfigureWebhookRequest(url=url, events=events, secret=secret),
        metadata=account.md(),
        timeout=10,
    )


def logs_of(webhooks: Any, account: Any, event_id: str) -> list[Any]:
    reply = webhooks.ListWebhookLogs(
        pb.ListWebhookLogsRequest(event_id=event_id, limit=100), metadata=account.md(), timeout=10
    )
    return sorted(reply.logs, key=lambda log: (log.timestamp.ToDatetime(), log.attempt))


def test_every_delivery_passes_the_faq_snippet_and_standard_webhooks(
    server: RunningServer,
    worker: Program,
    webhooks: pb_grpc.WebhookServiceStub,
    account: Account,
    server_db: Database,
    logs_dir: Path,
) -> None:
    port = free_port()
    hook = configure(
        webhooks,
        account,
        f"http://127.0.0.1:{port}/hooks",
        ["sms.sent", "sms.delivered", "device.connected"],
    )
    assert hook.secret.startswith("whsec_")
    assert hook.status == "active"
    own_secret = "my-own-secret-of-32-characters!!"
    with (
        Receiver(logs_dir, secret=hook.secret, port=port) as receiver,
        Receiver(logs_dir, secret=own_secret, name="own-secret") as second,
    ):
        configure(webhooks, account, second.url, ["sms.delivered"], secret=own_secret)
        test = webhooks.TestWebhook(
            pb.TestWebhookRequest(webhook_id=hook.webhook_id), metadata=account.md(), timeout=10
        )
        inserted = [
            add_event(
                server_db,
                account.client_id,
                "sms.sent",
                data={"message_id": "msg_1", "message": "Café ☕ à 10 h 👍"},
            ),
            add_event(
                server_db, account.client_id, "device.connected", data={"device_id": "device_1"}
            ),
        ]
        add_event(server_db, account.client_id, "sms.received", data={"from": "+33600000000"})
        sms = sms_pb2_grpc.SmsServiceStub(grpc.insecure_channel(server[1]))
        sent = sms.SendSms(
            sms_pb2.SendSmsRequest(to="+33612345678", message="Bonjour 👋"),
            metadata=account.md(test=True),
            timeout=10,
        )

        records = receiver.wait_for(lambda r: len(r) >= 5, what="5 deliveries")
        own = second.wait_for(lambda r: len(r) >= 1)
    assert all(r["verified"] for r in records + own), "the FAQ's check must accept every delivery"
    for record in records:
        body = verify_standard(record, hook.secret)  # raises unless the signature is valid
        assert record["headers"]["webhook-id"] == body["event_id"] == record["event_id"]
        assert record["headers"]["content-type"] == "application/json"
        assert record["headers"]["user-agent"] == "ZimSend-Webhook/1.0"
        assert set(body) == {"event", "event_id", "timestamp", "data"}
    verify_standard(own[0], own_secret.encode())  # a customer's own secret: its raw bytes
    by_event = {r["event_id"]: json.loads(body_of(r)) for r in records}
    assert {test.event_id, *inserted} <= set(by_event)
    assert by_event[inserted[0]]["data"]["message"] == "Café ☕ à 10 h 👍"
    assert by_event[test.event_id]["event"] == "webhook.test"
    real = sorted(
        b["event"] for b in by_event.values() if b["data"].get("message_id") == sent.message_id
    )
    assert real == ["sms.delivered", "sms.sent"]
    assert json.loads(body_of(own[0]))["data"]["message_id"] == sent.message_id
    assert "sms.received" not in {b["event"] for b in by_event.values()}
    (log,) = logs_of(webhooks, account, test.event_id)
    assert log.success
    assert log.response_status == 200
    assert log.attempt == 1
    assert log.webhook_id == hook.webhook_id
    assert log.event == "webhook.test"


def test_a_receiver_down_for_two_attempts_gets_the_third(
    worker: Program,
    webhooks: pb_grpc.WebhookServiceStub,
    account: Account,
    server_db: Database,
    logs_dir: Path,
) -> None:
    port = free_port()  # nothing listens there yet
    hook = configure(webhooks, account, f"http://127.0.0.1:{port}/hooks", ["sms.delivered"])
    event_id = add_event(server_db, account.client_id, "sms.delivered")
    wait_until(lambda: len(logs_of(webhooks, account, event_id)) >= 2, what="two failed attempts")
    with Receiver(logs_dir, secret=hook.secret, port=port) as receiver:
        (record,) = receiver.wait_for(lambda r: len(r) >= 1)
    assert record["verified"]
    assert record["event_id"] == event_id
    # The receiver has the request before the worker has written the attempt row.
    wait_until(lambda: len(logs_of(webhooks, account, event_id)) >= 3, what="third attempt")
    first, second, third = logs_of(webhooks, account, event_id)
    assert [a.attempt for a in (first, second, third)] == [1, 2, 3]
    assert [a.success for a in (first, second, third)] == [False, False, True]
    assert first.response_status == 0
    assert "connection" in first.error
    gaps = [
        (b.timestamp.ToDatetime() - a.timestamp.ToDatetime()).total_seconds()
        for a, b in ((first, second), (second, third))
    ]
    assert gaps[0] >= 1, gaps
    assert gaps[1] >= 2, gaps
    assert gaps[1] > gaps[0], gaps
    assert event_row(server_db, event_id).status == "delivered"


def test_a_receiver_that_never_answers_ends_failed_and_can_be_redelivered(
    worker: Program,
    webhooks: pb_grpc.WebhookServiceStub,
    account: Account,
    server_db: Database,
    logs_dir: Path,
) -> None:
    port = free_port()
    hook = configure(webhooks, account, f"http://127.0.0.1:{port}/hooks", ["sms.failed"])
    with Receiver(logs_dir, secret=hook.secret, port=port, mode="hang") as receiver:
        event_id = add_event(server_db, account.client_id, "sms.failed")
        wait_until(lambda: event_row(server_db, event_id).status == "failed", what="failed")
        assert [r["event_id"] for r in receiver.records()] == [event_id] * 3
    attempts = logs_of(webhooks, account, event_id)
    assert [(a.attempt, a.success, a.response_status) for a in attempts] == [
        (1, False, 0),
        (2, False, 0),
        (3, False, 0),
    ]
    assert all("no response within 1 s" in a.error for a in attempts)
    assert all(a.response_time_ms >= 900 for a in attempts)

    with Receiver(logs_dir, secret=hook.secret, port=port) as receiver:  # back up
        reply = webhooks.RedeliverWebhookEvent(
            pb.RedeliverWebhookEventRequest(event_id=event_id), metadata=account.md(), timeout=10
        )
        assert reply.event_id == event_id
        (record,) = receiver.wait_for(lambda r: len(r) >= 1)
    assert record["event_id"] == event_id
    assert record["verified"]
    wait_until(lambda: event_row(server_db, event_id).status == "delivered", what="delivered")
    latest = logs_of(webhooks, account, event_id)[-1]
    assert (latest.attempt, latest.success) == (1, True)  # a fresh schedule, same event_id


def test_a_redirect_is_a_failure(
    worker: Program,
    webhooks: pb_grpc.WebhookServiceStub,
    account: Account,
    server_db: Database,
    logs_dir: Path,
) -> None:
    port = free_port()
    hook = configure(webhooks, account, f"http://127.0.0.1:{port}/hooks", ["sms.sent"])
    with Receiver(logs_dir, secret=hook.secret, port=port, mode="status", status=302) as receiver:
        event_id = add_event(server_db, account.client_id, "sms.sent")
        wait_until(lambda: event_row(server_db, event_id).status == "failed", what="failed")
        assert len(receiver.records()) == 3  # never followed to the Location
    attempts = logs_of(webhooks, account, event_id)
    assert all(a.response_status == 302 and "redirect" in a.error for a in attempts)


def test_killing_the_worker_mid_delivery_loses_nothing(
    tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> None:
    env, db, client_id = isolated(tmp_path_factory, ZIMSEND_WEBHOOK_TIMEOUT_SECONDS="5")
    port = free_port()
    hook = webhook_endpoints.configure(
        db,
        TEST_PEPPER.encode(),
        client_id,
        url=f"http://127.0.0.1:{port}/h",
        events=["sms.sent"],
        secret="",
        allow_insecure=True,
    )
    with Receiver(logs_dir, secret=hook.secret, port=port, delay_ms=3000) as receiver:
        first = start_worker(env, logs_dir, "doomed", "--lease-seconds", "8")
        try:
            events = [add_event(db, client_id, "sms.sent") for _ in range(5)]
            receiver.wait_for(lambda r: len(r) >= 1, what="a delivery in flight")
            first.kill(signal.SIGKILL)  # mid-delivery: the receiver holds every answer 3 s
            first.proc.wait(10)
        finally:
            first.stop()
        pending = {e: event_row(db, e).status for e in events}
        assert "delivering" in pending.values(), pending  # really killed mid-delivery
        with start_worker(env, logs_dir, "restarted", "--lease-seconds", "8"):
            wait_until(
                lambda: all(event_row(db, e).status == "delivered" for e in events),
                timeout=90,
                what="every event delivered after the restart",
            )
        records = receiver.records()
    db.dispose()
    received = Counter(r["event_id"] for r in records)
    assert set(received) == set(events)  # nothing lost
    assert all(r["verified"] for r in records)
    for record in records:  # a duplicate is the same event: same id, same body
        assert json.loads(body_of(record))["event_id"] == record["event_id"]
        assert record["headers"]["webhook-id"] == record["event_id"]


def test_ctrl_c_lets_the_delivery_in_flight_finish(
    tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> None:
    env, db, client_id = isolated(tmp_path_factory, ZIMSEND_WEBHOOK_TIMEOUT_SECONDS="5")
    port = free_port()
    hook = webhook_endpoints.configure(
        db,
        TEST_PEPPER.encode(),
        client_id,
        url=f"http://127.0.0.1:{port}/h",
        events=["sms.sent"],
        secret="",
        allow_insecure=True,
    )
    with Receiver(logs_dir, secret=hook.secret, port=port, delay_ms=2000) as receiver:
        worker = start_worker(env, logs_dir, "interrupted", "--lease-seconds", "8")
        with worker:
            event_id = add_event(db, client_id, "sms.sent")
            receiver.wait_for(lambda r: len(r) >= 1, what="a delivery in flight")
            worker.kill(signal.SIGINT)  # what Ctrl-C in the terminal sends
            assert worker.proc.wait(15) == 0
        assert "worker.stopped" in worker.log_path.read_text()
    (attempt,) = deliveries(db, event_id)
    assert attempt.success
    assert attempt.response_time_ms is not None
    assert attempt.response_time_ms >= 1900
    assert event_row(db, event_id).status == "delivered"
    db.dispose()


@pytest.mark.postgres
def test_two_workers_on_postgresql_deliver_each_event_once(
    postgres_database_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    logs_dir: Path,
) -> None:
    env = make_env(
        tmp_path_factory.mktemp("pg-data"),
        TEST_PEPPER,
        **SHORT,
        ZIMSEND_DATABASE_URL=postgres_database_url,
    )
    program, address = start_server(Path(env["ZIMSEND_DATA_DIR"]), env, logs_dir)
    db = Database.from_url(postgres_database_url)
    with program, grpc.insecure_channel(address) as channel:
        webhooks = pb_grpc.WebhookServiceStub(channel)
        account = new_account(db, TEST_PEPPER.encode(), "pg-webhooks")
        port = free_port()
        hook = configure(webhooks, account, f"http://127.0.0.1:{port}/hooks", ["sms.delivered"])
        # Few events in flight per worker and a slowish receiver: both workers must take part.
        with (
            Receiver(logs_dir, secret=hook.secret, port=port, delay_ms=200) as receiver,
            start_worker(env, logs_dir, "pg-a", "--max-in-flight", "4"),
            start_worker(env, logs_dir, "pg-b", "--max-in-flight", "4"),
        ):
            events = [add_event(db, account.client_id, "sms.delivered") for _ in range(60)]
            records = receiver.wait_for(
                lambda r: len({x["event_id"] for x in r}) >= 60, timeout=90, what="60 events"
            )
            wait_until(
                lambda: all(event_row(db, e).status == "delivered" for e in events),
                what="all delivered",
            )
            records = receiver.records()
        reply = webhooks.ListWebhookLogs(
            pb.ListWebhookLogsRequest(limit=100), metadata=account.md(), timeout=10
        )
    db.dispose()
    counts = Counter(r["event_id"] for r in records)
    assert set(counts) == set(events), counts.most_common(3)
    assert set(counts.values()) == {1}, counts.most_common(3)
    assert all(r["verified"] for r in records)
    assert reply.pagination.total_items == 60
    workers = {
        line for line in (logs_dir.glob("pg-*.log")) if "webhook.attempted" in line.read_text()
    }
    assert len(workers) == 2, "both workers should have delivered some events"


def test_private_addresses_are_refused_at_delivery(
    tmp_path_factory: pytest.TempPathFactory, logs_dir: Path
) -> None:
    env, db, client_id = isolated(tmp_path_factory, ZIMSEND_WEBHOOKS_ALLOW_INSECURE="0")
    webhook_endpoints.configure(
        db,
        TEST_PEPPER.encode(),
        client_id,
        url="https://hooks.example.com/z",
        events=["otp.verified"],
        secret="",
        allow_insecure=False,
    )  # signs overrides
    urls = [
        "https://127.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://2130706433/",
        "https://0x7f.1/",
        "http://127.0.0.1:9/",
    ]
    events = {add_event(db, client_id, "sms.sent", webhook_url=u): u for u in urls}
    with start_worker(env, logs_dir, "secure", "--lease-seconds", "4"):
        wait_until(
            lambda: all(event_row(db, e).status == "failed" for e in events), what="all refused"
        )
    for event_id, url in events.items():
        attempts = deliveries(db, event_id)
        assert len(attempts) == 3
        assert all(a.url == url and a.response_status is None for a in attempts)
        error = attempts[0].error or ""
        assert ("loopback" in error) or ("https" in error), error
    db.dispose()


def test_the_default_schedule_is_0_60_300_and_the_setting_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in SHORT:
        monkeypatch.delenv(name, raising=False)
    assert Settings().webhook_retry_schedule_seconds == [0, 60, 300]
    assert Settings().webhook_timeout_seconds == 5
    monkeypatch.setenv("ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS", "[0,1,2]")
    assert Settings().webhook_retry_schedule_seconds == [0, 1, 2]
    assert isinstance(
        dt.timedelta(seconds=Settings().webhook_retry_schedule_seconds[2]), dt.timedelta
    )
