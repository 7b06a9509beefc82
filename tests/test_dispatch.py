"""Dispatch with real processes (issue 5 item 5, DESIGN "Dispatch"): priority then age, pacing
per device at the default 2.5 s, N phones share the queue, scheduled messages wait for their
time, and `zs_test_` messages go to the built-in simulated device only.

Timing assertions are deliberately generous (a loaded 2-core CI machine); order assertions are
exact.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from pathlib import Path
from typing import Any

import pytest
from _devices import (
    RawPhone,
    ServerDb,
    Tenant,
    outbox_lines,
    start_agent,
    wait_for,
)
from _processes import Program
from _processes import zimsend_env as make_env
from conftest import RunningServer

from zimsend.segments import plan
from zimsend.server.accounts import credentials
from zimsend.server.storage import Database, Message, utcnow
from zimsend.v1 import common_pb2

pytestmark = pytest.mark.slow
PACING_S = 2.5


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Default pacing (2500 ms), 1 s heartbeats."""
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("dispatch-data"),
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",
    )  # the tests poll GetDevice


@pytest.fixture(scope="module")
def address(server: RunningServer) -> str:
    return str(server[1])


def queue_directly(zimsend_env: dict[str, str], client_id: str, priorities: list[int]) -> list[str]:
    """Queue messages through storage (no device is online yet, so SendSms would refuse an
    immediate send), 10 ms apart so their age order is unambiguous."""
    db = Database.from_url(f"sqlite:///{Path(zimsend_env['ZIMSEND_DATA_DIR']) / 'zimsend.db'}")
    ids = []
    try:
        for n, priority in enumerate(priorities):
            text = f"message {n} priority {priority}"
            segments = plan(text)
            now = utcnow()
            message = Message(
                id=credentials.new_id("msg"),
                client_id=client_id,
                to="+33612345678",
                body=text,
                priority=priority,
                segments=len(segments.parts),
                encoding="GSM-7" if segments.encoding == "GSM7" else "UCS-2",
                due_at=now,
                queued_at=now,
                created_at=now,
                expires_at=now + dt.timedelta(hours=24),
            )
            with db.write() as session:
                session.add(message)
            ids.append(message.id)
            time.sleep(0.01)
    finally:
        db.dispose()
    return ids


def sent_times(lines: list[dict[str, Any]]) -> list[float]:
    return [
        dt.datetime.fromisoformat(line["sent_at"].replace("Z", "+00:00")).timestamp()
        for line in lines
    ]


def test_one_phone_sends_in_priority_order_about_every_2_5_seconds(
    tenant: Tenant,
    address: str,
    zimsend_env: dict[str, str],
    tmp_path: Path,
    link_db: ServerDb,
) -> None:
    device = tenant.create_device()
    priorities = [3, 5, 1, 4, 2, 3, 1, 5, 2, 4]
    ids = queue_directly(zimsend_env, tenant.client_id, priorities)
    expected = [i for _, _, i in sorted(zip(priorities, range(10), ids, strict=False))]
    with start_agent(
        zimsend_env, address, tenant.client_id, device.device_id, device.device_password, tmp_path
    ):
        outbox = tmp_path / "outbox.jsonl"
        wait_for(lambda: len(outbox_lines(outbox)) == 10, 90, "10 sends")
        lines = outbox_lines(outbox)
        wait_for(
            lambda: all(s in ("sent", "delivered") for s in link_db.statuses(ids).values()),
            20,
            "every message reported",
        )
    assert [line["message_id"] for line in lines] == expected
    times = sent_times(lines)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= PACING_S - 0.3, gaps
    assert max(gaps) <= PACING_S + 2.5, gaps
    total = times[-1] - times[0]
    assert 9 * PACING_S - 0.5 <= total <= 9 * PACING_S + 8, total
    assert [k for k, _ in link_db.events(tenant.client_id, "sms.sent")] == ["sms.sent"] * 10


def test_three_phones_share_the_queue_about_three_times_faster(
    tenant: Tenant,
    address: str,
    zimsend_env: dict[str, str],
    tmp_path: Path,
    link_db: ServerDb,
) -> None:
    devices = [tenant.create_device(f"phone {n}") for n in range(3)]
    agents: list[Program] = []
    try:
        for n, device in enumerate(devices):
            workdir = tmp_path / f"phone{n}"
            workdir.mkdir()
            agents.append(
                start_agent(
                    zimsend_env,
                    address,
                    tenant.client_id,
                    device.device_id,
                    device.device_password,
                    workdir,
                    name=f"agent{n}",
                )
            )
        for device in devices:
            wait_for(lambda d=device: tenant.online(d.device_id), 30, "three phones online")
        ids = [tenant.send("+33612345678", f"shared {n}") for n in range(12)]
        outboxes = [tmp_path / f"phone{n}" / "outbox.jsonl" for n in range(3)]
        wait_for(lambda: sum(len(outbox_lines(o)) for o in outboxes) == 12, 60, "12 sends")
        per_phone = [outbox_lines(o) for o in outboxes]
    finally:
        for agent in agents:
            agent.stop()
    assert all(len(lines) >= 2 for lines in per_phone), [len(x) for x in per_phone]
    sent = sorted(line["message_id"] for lines in per_phone for line in lines)
    assert sent == sorted(ids)  # each message once, on one phone
    times = sorted(t for lines in per_phone for t in sent_times(lines))
    one_phone = 11 * PACING_S
    assert times[-1] - times[0] < one_phone / 2, times[-1] - times[0]
    for lines in per_phone:  # each phone still respects its own pacing
        own = sent_times(lines)
        assert all(b - a >= PACING_S - 0.3 for a, b in itertools.pairwise(own))
    by_device = link_db.query(
        "SELECT device_id, count(*) FROM messages WHERE client_id = ? GROUP BY device_id",
        tenant.client_id,
    )
    assert sorted(c for _, c in by_device) == sorted(len(x) for x in per_phone)


def test_a_scheduled_message_is_pushed_when_due_not_before(tenant: Tenant, address: str) -> None:
    device = tenant.create_device()
    raw = RawPhone(address, tenant.client_id, device.device_id, device.device_password)
    try:
        raw.hello()
        at = utcnow() + dt.timedelta(seconds=3)
        message_id = tenant.send(
            "+33612345678", "later", scheduled_at=at.isoformat().replace("+00:00", "Z")
        )
        command = raw.expect("send", timeout=10).send
        arrived = utcnow()
        assert command.message_id == message_id
        assert at - dt.timedelta(milliseconds=100) <= arrived <= at + dt.timedelta(seconds=2)
    finally:
        raw.close()


def test_test_key_messages_go_to_the_simulated_device_only(
    tenant: Tenant, address: str, link_db: ServerDb
) -> None:
    device = tenant.create_device()
    raw = RawPhone(address, tenant.client_id, device.device_id, device.device_password)
    try:
        raw.hello()
        message_id = tenant.send("+33612345678", "sandbox", test=True)
        wait_for(
            lambda: tenant.status(message_id, test=True).status == common_pb2.delivered,
            10,
            "the simulated device to deliver",
        )
        with pytest.raises(AssertionError):
            raw.expect("send", timeout=1.0)  # the live phone never sees it
    finally:
        raw.close()
    status = tenant.status(message_id, test=True)
    assert status.device_id
    assert status.device_id != device.device_id
    assert [k for k, _ in link_db.events(tenant.client_id, "sms.")] == ["sms.sent", "sms.delivered"]
    listed = tenant.get_device(status.device_id)
    assert listed.status == common_pb2.online
    assert "Simulated" in listed.name
