"""Metrics and request ids (issue 15 items 3-4), on real processes: `zimsend serve` behind
Envoy with its Prometheus endpoint on, a simulated phone (the real agent), a real `zimsend
worker` with its own endpoint, and a webhook receiver run by node.

What an operator does: GET the endpoints (as `curl` or Prometheus would) before and after a
REST send, and follow the send's `X-Request-ID` through the server's and the worker's JSON log
lines. docs/operations.md explains each metric named here.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from _devices import start_agent, wait_for
from _processes import Program, free_port
from _processes import zimsend_env as make_env
from _receivers import Receiver, body_of, start_worker
from conftest import RunningServer, Stack
from prometheus_client.parser import text_string_to_metric_families

from zimsend.server.storage import Database
from zimsend.v1 import sms_pb2, sms_pb2_grpc

pytestmark = pytest.mark.slow
TEST_PEPPER = "test-pepper-not-secret-0123456789"
SERVER_METRICS = free_port()
WORKER_METRICS = free_port()
WEBHOOK_SECRET = "whsec_bWV0cmljcy10ZXN0LXNlY3JldC0wMTIzNDU2Nzg5YWI="
#: Label names the endpoints may use: bounded sets only (metrics.py).
ALLOWED_LABELS = {
    "service",
    "method",
    "code",
    "reason",
    "kind",
    "priority",
    "state",
    "outcome",
    "result",
    "le",
}
#: What an id looks like: ours (`msg_…`, `device_…`), or a UUID (Envoy's request ids).
ID_LIKE = re.compile(
    r"^(msg|device|client|batch|evt|otp|key|wh|cmd|in)_[0-9a-f]{6,}|"
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-"
)


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return make_env(
        tmp_path_factory.mktemp("zimsend-data"),
        TEST_PEPPER,
        ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="1000000",
        ZIMSEND_METRICS_PORT=str(SERVER_METRICS),
        ZIMSEND_WORKER_METRICS_PORT=str(WORKER_METRICS),
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
    )


@pytest.fixture(scope="module")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("metrics-logs")


@pytest.fixture(scope="module")
def phone(stack: Stack, zimsend_env: dict[str, str], logs_dir: Path) -> Iterator[str]:
    """The real agent (simulator backend) for a device of the stack's client, online."""
    created = httpx.post(
        f"{stack.base_url}/v1/devices", headers=stack.auth, json={"name": "metrics phone"}
    ).json()
    device_id = created["device_id"]
    with start_agent(
        zimsend_env,
        stack.envoy.device_target,
        stack.client_id,
        device_id,
        created["device_password"],
        logs_dir,
        "--send-delay",
        "0.05",
        "--delivery-delay",
        "0.2",
    ):
        wait_for(lambda: _device_status(stack, device_id) == "online", 30, "the phone online")
        yield device_id


@pytest.fixture(scope="module")
def receiver(stack: Stack, logs_dir: Path) -> Iterator[Receiver]:
    with Receiver(logs_dir, secret=WEBHOOK_SECRET) as hooks:
        reply = httpx.post(
            f"{stack.base_url}/v1/webhooks/configure",
            headers=stack.auth,
            json={
                "url": hooks.url,
                "events": ["sms.sent", "sms.delivered", "sms.failed"],
                "secret": WEBHOOK_SECRET,
            },
        )
        assert reply.status_code == 200, reply.text
        yield hooks


@pytest.fixture(scope="module")
def worker(server: RunningServer, zimsend_env: dict[str, str], logs_dir: Path) -> Iterator[Program]:
    with start_worker(zimsend_env, logs_dir, "metrics-worker") as program:
        yield program


def _device_status(stack: Stack, device_id: str) -> str:
    reply = httpx.get(f"{stack.base_url}/v1/devices/{device_id}", headers=stack.auth)
    return str(reply.json().get("status"))


def _message_status(stack: Stack, message_id: str) -> str:
    reply = httpx.get(f"{stack.base_url}/v1/sms/status/{message_id}", headers=stack.auth)
    return str(reply.json().get("status"))


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET the endpoint as curl would; every sample by (name, sorted labels)."""
    reply = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10)
    assert reply.status_code == 200
    assert reply.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(reply.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


def assert_no_ids(samples: dict[Any, float], *ids: str) -> None:
    for name, labels in samples:
        if not name.startswith("zimsend_"):
            continue
        for label, text in labels:
            assert label in ALLOWED_LABELS, f"{name} has an unexpected label {label}"
            assert not ID_LIKE.search(text), f"{name}{{{label}={text!r}}} looks like an id"
            assert text not in ids, f"{name}{{{label}={text!r}}} is an id"


def log_lines(program: Program) -> list[dict[str, Any]]:
    lines = []
    for line in program.output().splitlines():
        if line.startswith("{"):
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
    return lines


def events_for(program: Program, request_id: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in log_lines(program):
        if line.get("request_id") == request_id:
            found.setdefault(line["event"], []).append(line)
    return found


def test_a_rest_send_moves_the_server_counters(stack: Stack, phone: str) -> None:
    before = scrape(SERVER_METRICS)
    request_id = f"metrics-{uuid.uuid4().hex}"
    reply = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers={**stack.auth, "X-Request-ID": request_id},
        json={"to": "+33612345678", "message": "counted, never logged"},
    )
    assert reply.status_code == 200, reply.text
    message_id = reply.json()["message_id"]
    wait_for(lambda: _message_status(stack, message_id) == "delivered", 30, "delivered")
    # The delivered report is counted right after its commit, the status read may come first.
    wait_for(
        lambda: (
            value(scrape(SERVER_METRICS), "zimsend_messages_delivered_total")
            > value(before, "zimsend_messages_delivered_total")
        ),
        10,
        "delivered counted",
    )
    after = scrape(SERVER_METRICS)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("zimsend_messages_accepted_total") == 1
    assert moved("zimsend_messages_sent_total") >= 1
    assert moved("zimsend_messages_delivered_total") >= 1
    assert (
        moved("zimsend_rpc_requests_total", service="SmsService", method="SendSms", code="OK") == 1
    )
    assert moved("zimsend_rpc_duration_seconds_count", service="SmsService", method="SendSms") == 1
    assert moved("zimsend_rpc_duration_seconds_sum", service="SmsService", method="SendSms") > 0
    assert moved("zimsend_dispatch_latency_seconds_count") >= 1
    assert moved("zimsend_reports_applied_total", kind="status") >= 2  # sent, delivered
    assert moved("zimsend_db_write_transaction_seconds_count") >= 3
    assert value(after, "zimsend_phones_connected") >= 1
    assert value(after, "zimsend_phones_online") >= 1
    for priority in ("urgent", "high", "normal", "low", "very_low"):
        for state in ("due", "scheduled"):
            assert ("zimsend_queue_messages", (("priority", priority), ("state", state))) in after
        assert ("zimsend_queue_oldest_due_age_seconds", (("priority", priority),)) in after
    assert_no_ids(after, stack.client_id, phone, message_id, request_id)


def test_failed_calls_are_counted_by_grpc_code(stack: Stack) -> None:
    before = scrape(SERVER_METRICS)
    reply = httpx.get(f"{stack.base_url}/v1/sms/status/msg_0000000000000000", headers=stack.auth)
    assert reply.status_code == 404
    after = scrape(SERVER_METRICS)
    assert (
        value(after, "zimsend_rpc_requests_total", method="GetSmsStatus", code="NOT_FOUND")
        - value(before, "zimsend_rpc_requests_total", method="GetSmsStatus", code="NOT_FOUND")
        == 1
    )


def test_the_queue_gauges_count_scheduled_and_due_messages(stack: Stack) -> None:
    """A message for tomorrow is `scheduled`; one pinned to a phone that never connects
    becomes `due` at its time and ages. Both are read from the database at scrape time."""
    offline = httpx.post(
        f"{stack.base_url}/v1/devices", headers=stack.auth, json={"name": "never connected"}
    ).json()["device_id"]
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    tomorrow = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
    ids = []
    for priority, at in (("low", tomorrow), ("very_low", soon)):
        reply = httpx.post(
            f"{stack.base_url}/v1/sms/send",
            headers={**stack.auth, "X-Device-ID": offline},
            json={
                "to": "+33612345670",
                "message": "waits",
                "priority": priority,
                "scheduled_at": at.isoformat().replace("+00:00", "Z"),
            },
        )
        assert reply.status_code == 200, reply.text
        ids.append(reply.json()["message_id"])
    samples = scrape(SERVER_METRICS)
    assert value(samples, "zimsend_queue_messages", priority="low", state="scheduled") == 1
    wait_for(
        lambda: (
            value(
                scrape(SERVER_METRICS), "zimsend_queue_oldest_due_age_seconds", priority="very_low"
            )
            >= 1
        ),
        10,
        "the due message ageing",
    )
    samples = scrape(SERVER_METRICS)
    assert value(samples, "zimsend_queue_messages", priority="very_low", state="due") == 1
    for message_id in ids:
        httpx.delete(f"{stack.base_url}/v1/sms/{message_id}", headers=stack.auth)
    samples = scrape(SERVER_METRICS)
    assert value(samples, "zimsend_queue_messages", priority="low") == 0
    assert value(samples, "zimsend_queue_oldest_due_age_seconds", priority="very_low") == 0


def test_the_worker_counts_webhook_attempts_and_logs_the_request_id(
    stack: Stack,
    phone: str,
    receiver: Receiver,
    worker: Program,
    server: RunningServer,
) -> None:
    """One request id from the REST call: the server's accept, dispatch and report lines, and
    the worker's delivery line; the worker's endpoint counts the attempts."""
    before = scrape(WORKER_METRICS)
    request_id = f"trace-{uuid.uuid4().hex}"
    body = f"do not log me {uuid.uuid4().hex}"
    reply = httpx.post(
        f"{stack.base_url}/v1/sms/send",
        headers={**stack.auth, "X-Request-ID": request_id},
        json={"to": "+33612345679", "message": body},
    )
    assert reply.status_code == 200, reply.text
    message_id = reply.json()["message_id"]
    receiver.wait_for(
        lambda records: (
            sum(json.loads(body_of(r))["data"].get("message_id") == message_id for r in records)
            >= 2
        ),
        what="sms.sent and sms.delivered",
    )
    wait_for(
        lambda: len(events_for(worker, request_id).get("webhook.attempted", [])) >= 2,
        30,
        "the worker's delivery lines for sms.sent and sms.delivered",
    )

    program, _ = server
    seen = events_for(program, request_id)
    assert seen["sms.accepted"][0]["message_id"] == message_id
    assert seen["sms.dispatched"][0]["message_id"] == message_id
    assert seen["sms.dispatched"][0]["device_id"] == phone
    assert {line["status"] for line in seen["sms.status"]} == {"sent", "delivered"}
    deliveries = events_for(worker, request_id)["webhook.attempted"]
    assert {line["event_type"] for line in deliveries} == {"sms.sent", "sms.delivered"}
    assert all(
        line["message_id"] == message_id and line["status"] == "delivered" for line in deliveries
    )
    for output in (program.output(), worker.output()):
        assert body not in output, "a message body reached a log"
        assert stack.api_key not in output

    after = scrape(WORKER_METRICS)
    assert (
        value(after, "zimsend_webhook_attempts_total", outcome="success")
        - value(before, "zimsend_webhook_attempts_total", outcome="success")
        >= 2
    )
    assert (
        value(after, "zimsend_webhook_attempt_duration_seconds_count", outcome="success")
        - value(before, "zimsend_webhook_attempt_duration_seconds_count", outcome="success")
        >= 2
    )
    assert (
        value(after, "zimsend_webhook_events_total", result="delivered")
        - value(before, "zimsend_webhook_events_total", result="delivered")
        >= 2
    )
    assert value(after, "zimsend_db_write_transaction_seconds_count") > 0
    assert_no_ids(after, stack.client_id, phone, message_id, request_id)


def test_a_direct_grpc_send_gets_a_request_id_of_its_own(
    stack: Stack, server: RunningServer
) -> None:
    """Without Envoy there is no x-request-id: the server makes one, logs and stores it."""
    program, address = server
    with grpc.insecure_channel(address) as channel:
        reply = sms_pb2_grpc.SmsServiceStub(channel).SendSms(
            sms_pb2.SendSmsRequest(to="+33612345671", message="direct"),
            metadata=stack.metadata,
            timeout=10,
        )
    accepted = wait_for(
        lambda: [
            line
            for line in log_lines(program)
            if line["event"] == "sms.accepted" and line.get("message_id") == reply.message_id
        ],
        10,
        "the accept line",
    )
    assert re.fullmatch(r"[0-9a-f-]{36}", accepted[0]["request_id"])


def test_the_queue_sample_on_both_engines(db: Database) -> None:
    """The scrape-time query (`metrics.Sampler`) on SQLite and PostgreSQL: due and scheduled
    counts per priority, the oldest due message's age; other statuses are not queued."""
    from _webhooks import seed_client

    from zimsend.server import metrics
    from zimsend.server.storage import Message

    client_id = seed_client(db)
    now = dt.datetime.now(dt.UTC)
    rows = [
        (1, now - dt.timedelta(seconds=90), "queued"),
        (1, now - dt.timedelta(seconds=5), "queued"),
        (1, now + dt.timedelta(hours=1), "queued"),
        (3, now + dt.timedelta(hours=2), "queued"),
        (3, now - dt.timedelta(hours=1), "sent"),
    ]
    with db.write() as session:
        for n, (priority, due_at, status) in enumerate(rows):
            session.add(
                Message(
                    id=f"msg_queue{n}",
                    client_id=client_id,
                    to="+33612345678",
                    body="x",
                    priority=priority,
                    status=status,
                    due_at=due_at,
                )
            )
    metrics.watch(db)
    families = {f.name: f for f in metrics.SAMPLER.collect()}
    depth = {tuple(s.labels.values()): s.value for s in families["zimsend_queue_messages"].samples}
    age = {
        s.labels["priority"]: s.value
        for s in families["zimsend_queue_oldest_due_age_seconds"].samples
    }
    assert depth[("urgent", "due")] == 2
    assert depth[("urgent", "scheduled")] == 1
    assert depth[("normal", "due")] == 0
    assert depth[("normal", "scheduled")] == 1
    assert depth[("high", "due")] == 0
    assert 89 <= age["urgent"] < 120
    assert age["normal"] == 0
    assert age["low"] == 0


def test_every_metric_is_documented_and_every_documented_metric_exists(worker: Program) -> None:
    """docs/operations.md explains each exported `zimsend_*` family, and neither it nor the
    Grafana dashboard names one that does not exist (runs after the sends above, so every
    labelled family has a series)."""
    docs = Path(__file__).parents[1] / "docs"
    exported = {
        name
        for port in (SERVER_METRICS, WORKER_METRICS)
        for name, _ in scrape(port)
        if name.startswith("zimsend_")
    }
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in exported}
    operations = (docs / "operations.md").read_text()
    dashboard = json.loads((docs / "grafana-dashboard.json").read_text())
    for family in families:
        assert f"`{family}" in operations, f"{family} is not explained in operations.md"
    exprs = " ".join(
        target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])
    )
    for text, where in ((operations, "operations.md"), (exprs, "grafana-dashboard.json")):
        for name in set(re.findall(r"\bzimsend_[a-z_]*[a-z]\b", text)):
            assert any(e.startswith(name) for e in exported), f"{where} names {name}"
