"""The device agent speaking DeviceLink, as a phone does (SPEC.md §5, §9).

These run the real agent (trio, sync grpcio in threads) against `_agent_double`, a minimal
grpc.aio stand-in for the server's DeviceLink side. The end-to-end tests against the real
server come with issue 4's server side; until then the double pins the frame order the agent
relies on.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from _agent_double import DeviceLinkDouble

from zimsend.agent.agent import AgentConfig, run_agent
from zimsend.agent.backoff import Backoff
from zimsend.agent.journal import Journal
from zimsend.agent.senders.simulator import SimulatorSender
from zimsend.agent.simulation import SimulationConfig, read_outbox
from zimsend.agent.supervisor import EXIT_REFUSED, EXIT_STOPPED, AgentStopped
from zimsend.v1 import device_link_pb2 as pb

SENT = pb.StatusReport.OUTCOME_SENT
DELIVERED = pb.StatusReport.OUTCOME_DELIVERED
FAILED = pb.StatusReport.OUTCOME_FAILED
LONG = "x" * 200  # two GSM-7 parts


@pytest.fixture
def double() -> Iterator[DeviceLinkDouble]:
    d = DeviceLinkDouble()
    d.add_device("dev1")
    d.start()
    yield d
    d.stop()


class Phone:
    """One agent's configuration, sender and outbox."""

    def __init__(
        self,
        double: DeviceLinkDouble,
        tmp_path: Path,
        device_id: str = "dev1",
        password: str = "pw",
        **simulation: Any,
    ) -> None:
        self.outbox = tmp_path / "outbox.jsonl"
        self.journal = tmp_path / f"journal-{device_id}.sqlite3"
        self.config = AgentConfig(
            server=f"127.0.0.1:{double.port}",
            client_id="client_test",
            device_id=device_id,
            password=password,
            journal=self.journal,
        )
        options: dict[str, Any] = {
            "seed": 1,
            "send_delay": 0.005,
            "delivery_delay": 0.02,
            **simulation,
        }
        self.sender = SimulatorSender(
            SimulationConfig(outbox=self.outbox, **options), device_id=device_id
        )

    def run(
        self, scenario: Callable[[], Awaitable[None]], limiter: trio.CapacityLimiter | None = None
    ) -> None:
        """Run the agent while `scenario` runs, then stop it (trio.run)."""

        async def main() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.agent, limiter)
                await scenario()
                nursery.cancel_scope.cancel()

        trio.run(main)

    async def agent(self, limiter: trio.CapacityLimiter | None = None) -> None:
        await run_agent(
            self.config, self.sender, limiter=limiter, backoff=Backoff(base=0.05, cap=0.2)
        )

    def sends(self) -> int:
        return sum(read_outbox(self.outbox).values())


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the deadline is part of this call's contract
    with trio.fail_after(timeout):
        while not predicate():  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
            await trio.sleep(0.01)


def unacked(journal: Path) -> int:
    """Reports the phone still holds (read from its journal file, as a second process would)."""
    with sqlite3.connect(journal) as db:
        return int(db.execute("SELECT COUNT(*) FROM reports").fetchone()[0])


def reports_for(double: DeviceLinkDouble, message_id: str) -> list[tuple[int, int]]:
    return [(r.part_index, r.outcome) for r in double.reports("dev1") if r.message_id == message_id]


def test_hello_first_then_each_part_reported_sent_then_delivered(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    phone = Phone(double, tmp_path)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        double.send_command("dev1", "msg_1", LONG)
        await until(
            lambda: (
                reports_for(double, "msg_1").count((1, DELIVERED)) == 1
                and reports_for(double, "msg_1").count((0, DELIVERED)) == 1
            )
        )
        await until(lambda: unacked(phone.journal) == 0)  # every ReportAck reached the phone

    phone.run(scenario)
    frames = double.frames("dev1")
    kinds = [f.WhichOneof("frame") for f in frames]
    assert kinds[0] == "hello"
    assert frames[0].hello.model
    assert frames[0].hello.app_version
    assert "heartbeat" in kinds
    assert kinds.index("ack") < kinds.index("report")
    got = reports_for(double, "msg_1")
    assert sorted(got[:2]) == [(0, SENT), (1, SENT)]
    assert sorted(got[2:]) == [(0, DELIVERED), (1, DELIVERED)]
    assert all(r.part_count == 2 for r in double.reports("dev1"))
    assert phone.sends() == 1


def test_the_command_ack_is_sent_only_once_the_command_is_journaled(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    double.settings.enabled = False  # keep it queued
    phone = Phone(double, tmp_path)
    seen: list[str | None] = []

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        double.send_command("dev1", "msg_1")
        await until(lambda: bool(double.frames("dev1", "ack")))
        with sqlite3.connect(phone.journal) as db:
            row = db.execute("SELECT state FROM messages WHERE message_id = 'msg_1'").fetchone()
        seen.append(row[0] if row else None)

    phone.run(scenario)
    assert seen == ["queued"]
    assert double.frames("dev1", "ack")[0].ack.accepted
    assert phone.sends() == 0


def test_a_redelivery_after_a_reconnect_is_re_reported_not_re_sent(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    phone = Phone(double, tmp_path)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        double.send_command("dev1", "msg_1", LONG)
        await until(lambda: reports_for(double, "msg_1").count((0, DELIVERED)) == 1)
        double.drop("dev1")
        await until(lambda: double.connects["dev1"] == 2 and double.connected("dev1"))
        before = len(reports_for(double, "msg_1"))
        double.send_command("dev1", "msg_1", LONG, redelivery=True)
        await until(lambda: len(reports_for(double, "msg_1")) > before)
        await trio.sleep(0.1)

    phone.run(scenario)
    assert phone.sends() == 1
    acks = double.frames("dev1", "ack")
    assert len(acks) == 2
    assert all(a.ack.accepted for a in acks)


def test_a_restarted_agent_never_resends_what_it_already_sent(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    first = Phone(double, tmp_path)

    async def send_once() -> None:
        await until(lambda: double.connected("dev1"))
        double.send_command("dev1", "msg_1")
        await until(lambda: (0, SENT) in reports_for(double, "msg_1"))

    first.run(send_once)
    second = Phone(double, tmp_path)  # same journal and outbox, new process state

    async def reoffer() -> None:
        await until(lambda: double.connects["dev1"] == 2 and double.connected("dev1"))
        double.send_command("dev1", "msg_1", redelivery=True)
        await until(lambda: len(double.frames("dev1", "ack")) == 2)
        await trio.sleep(0.2)

    second.run(reoffer)
    assert second.sends() == 1


def test_a_crash_mid_handoff_is_reported_failed_and_the_message_is_never_sent(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    phone = Phone(double, tmp_path)
    journal = Journal.open(phone.journal, "dev1")
    journal.admit(
        pb.SendCommand(command_id="c1", message_id="msg_1", to="+263771234567", body="hello")
    )
    journal.begin_send("msg_1")  # the previous process died here
    journal.close()

    async def scenario() -> None:
        await until(lambda: (0, FAILED) in reports_for(double, "msg_1"))
        double.send_command("dev1", "msg_1", redelivery=True)
        await until(lambda: len(double.frames("dev1", "ack")) == 1)
        await trio.sleep(0.2)

    phone.run(scenario)
    failed = [r for r in double.reports("dev1") if r.outcome == FAILED]
    assert failed[0].error_code == "DEVICE_ERROR"
    assert list(double.frames("dev1", "hello")[0].hello.pending_message_ids) == ["msg_1"]
    assert phone.sends() == 0


def test_unacknowledged_reports_are_replayed_on_the_next_stream(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    double.auto_ack_reports = False
    phone = Phone(double, tmp_path, delivery_delay=-1)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        double.send_command("dev1", "msg_1")
        await until(lambda: (0, SENT) in reports_for(double, "msg_1"))
        double.drop("dev1")
        await until(lambda: reports_for(double, "msg_1").count((0, SENT)) == 2)

    phone.run(scenario)
    ids = [r.report_id for r in double.reports("dev1")]
    assert len(ids) == 2
    assert ids[0] == ids[1]
    assert list(double.frames("dev1", "hello")[1].hello.pending_message_ids) == ["msg_1"]


def test_settings_apply_live_enabled_and_send_interval(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    double.settings.enabled = False
    phone = Phone(double, tmp_path)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        for i in range(3):
            double.send_command("dev1", f"msg_{i}")
        await trio.sleep(0.3)
        assert phone.sends() == 0  # disabled: nothing leaves
        double.push(
            "dev1",
            pb.ServerFrame(
                settings=pb.DeviceSettings(
                    enabled=True, send_interval_ms=250, heartbeat_interval_seconds=30
                )
            ),
        )
        await until(lambda: phone.sends() == 3)

    phone.run(scenario)
    import json

    stamps = [json.loads(line)["sent_at"] for line in phone.outbox.read_text().splitlines()]
    from datetime import datetime

    times = [datetime.fromisoformat(s).timestamp() for s in stamps]
    assert times[2] - times[0] >= 0.45  # two intervals of 250 ms (minus the send delay)


def test_the_daily_cap_holds_commands_and_the_heartbeat_shows_the_queue(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    double.settings.enabled = False
    phone = Phone(double, tmp_path)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        for i in range(3):
            double.send_command("dev1", f"msg_{i}", priority=3 if i else 5)
        await until(lambda: len(double.frames("dev1", "ack")) == 3)
        double.push(
            "dev1",
            pb.ServerFrame(
                settings=pb.DeviceSettings(enabled=True, daily_cap=2, heartbeat_interval_seconds=1)
            ),
        )
        await until(lambda: phone.sends() == 2)
        await until(
            lambda: any(f.heartbeat.queue_depth == 1 for f in double.frames("dev1", "heartbeat")),
            timeout=5,
        )

    phone.run(scenario)
    assert phone.sends() == 2
    # very_low (5) waits behind normal (3): msg_0 is the one the cap holds back.
    assert set(read_outbox(phone.outbox)) == {"msg_1", "msg_2"}


def test_cancel_works_before_the_handoff_and_is_refused_after(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    phone = Phone(double, tmp_path)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        double.send_command("dev1", "msg_sent")
        await until(lambda: phone.sends() == 1)
        double.push("dev1", pb.ServerFrame(settings=pb.DeviceSettings(enabled=False)))
        double.send_command("dev1", "msg_held")
        await until(lambda: len(double.frames("dev1", "ack")) == 2)
        for mid in ("msg_held", "msg_sent"):
            double.push(
                "dev1",
                pb.ServerFrame(cancel=pb.CancelCommand(command_id=f"x-{mid}", message_id=mid)),
            )
        await until(lambda: len(double.frames("dev1", "ack")) == 4)
        double.push("dev1", pb.ServerFrame(settings=pb.DeviceSettings(enabled=True)))
        await trio.sleep(0.2)

    phone.run(scenario)
    acks = {a.ack.command_id: a.ack for a in double.frames("dev1", "ack")}
    assert acks["x-msg_held"].accepted is True
    assert acks["x-msg_sent"].accepted is False
    assert "too late" in acks["x-msg_sent"].reason
    assert set(read_outbox(phone.outbox)) == {"msg_sent"}


def test_ping_is_answered_and_inbound_sms_are_reported(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    phone = Phone(double, tmp_path)

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        double.push("dev1", pb.ServerFrame(ping=pb.Ping(nonce="n-1")))
        phone.sender.inject_inbound()
        await until(
            lambda: bool(double.frames("dev1", "pong")) and bool(double.frames("dev1", "inbound"))
        )

    phone.run(scenario)
    assert double.frames("dev1", "pong")[0].pong.nonce == "n-1"
    inbound = double.frames("dev1", "inbound")[0].inbound
    assert getattr(inbound, "from").startswith("+2637")
    assert inbound.report_id


def test_reconnect_waits_at_least_retry_after_then_reconnects(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    phone = Phone(double, tmp_path)
    elapsed: list[float] = []

    async def scenario() -> None:
        await until(lambda: double.connected("dev1"))
        start = time.monotonic()
        double.push(
            "dev1",
            pb.ServerFrame(
                reconnect=pb.Reconnect(reason_code=pb.Reconnect.SERVER_SHUTDOWN, retry_after_ms=400)
            ),
        )
        await until(lambda: double.connects["dev1"] == 2)
        elapsed.append(time.monotonic() - start)

    phone.run(scenario)
    assert elapsed[0] >= 0.4


@pytest.mark.parametrize(
    ("reason", "says"),
    [
        (pb.Reconnect(reason_code=pb.Reconnect.DEVICE_DELETED), "deleted"),
        (pb.Reconnect(reason_code=pb.Reconnect.DEVICE_DISABLED), "disabled"),
        (pb.Reconnect(reason_code=pb.Reconnect.PASSWORD_ROTATED), "rotated"),
        (pb.Reconnect(reason_code=pb.Reconnect.REPLACED), "second agent"),
        # A server older than `reason_code` sends only the deprecated string.
        (pb.Reconnect(reason="REPLACED"), "second agent"),
    ],
    ids=["deleted", "disabled", "rotated", "replaced", "replaced-by-an-older-server"],
)
def test_a_deleted_disabled_rotated_or_replaced_device_stops_the_agent(
    double: DeviceLinkDouble, tmp_path: Path, reason: pb.Reconnect, says: str
) -> None:
    phone = Phone(double, tmp_path)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_push_when_connected, double, reason)
            await phone.agent()

    with pytest.RaisesGroup(AgentStopped, flatten_subgroups=True) as caught:
        trio.run(main)
    stopped = caught.value.exceptions[0]
    assert isinstance(stopped, AgentStopped)
    assert stopped.exit_code == EXIT_STOPPED
    assert says in str(stopped)
    assert double.connects["dev1"] == 1


async def _push_when_connected(double: DeviceLinkDouble, reason: pb.Reconnect) -> None:
    await until(lambda: double.connected("dev1"))
    double.push("dev1", pb.ServerFrame(reconnect=reason))


@pytest.mark.parametrize(
    ("password", "refuse_reason", "says"),
    [("hunter2", "", "wrong device password"), ("pw", "DEVICE_DISABLED", "disabled")],
)
def test_a_refused_device_stops_at_once_with_a_clear_message(
    double: DeviceLinkDouble, tmp_path: Path, password: str, refuse_reason: str, says: str
) -> None:
    double.add_device("dev1", refuse_reason=refuse_reason)
    phone = Phone(double, tmp_path, password=password)
    with pytest.raises(AgentStopped) as caught:
        trio.run(phone.agent)
    assert caught.value.exit_code == EXIT_REFUSED
    assert str(caught.value).startswith("refused: ")
    assert says in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert double.refusals == 1  # no retry loop


def test_an_unreachable_server_is_retried_not_fatal(tmp_path: Path) -> None:
    unreachable = DeviceLinkDouble()
    unreachable.port = 9  # discard port: nothing listens
    phone = Phone(unreachable, tmp_path)

    async def scenario() -> None:
        await trio.sleep(0.6)

    phone.run(scenario)  # cancelled after 0.6 s without raising


def test_fifty_agents_in_one_process_share_a_dedicated_thread_limiter(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    # trio's default limiter (40 threads) would stall the 41st stream's reader.
    phones = []
    for i in range(50):
        double.add_device(f"dev{i}")
        (tmp_path / str(i)).mkdir()
        phones.append(Phone(double, tmp_path / str(i), device_id=f"dev{i}"))

    async def main() -> None:
        limiter = trio.CapacityLimiter(64)
        async with trio.open_nursery() as nursery:
            for phone in phones:
                nursery.start_soon(phone.agent, limiter)
            await until(lambda: all(double.connected(f"dev{i}") for i in range(50)), timeout=30)
            double.send_command("dev49", "msg_last")
            await until(lambda: phones[49].sends() == 1)
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_tls_with_a_private_ca_file(tmp_path: Path) -> None:
    from _certs import self_signed

    cert, key = self_signed(tmp_path)
    double = DeviceLinkDouble(tls=(cert.read_bytes(), key.read_bytes()))
    double.add_device("dev1")
    double.start()
    try:
        phone = Phone(double, tmp_path)
        phone.config = dataclasses.replace(phone.config, tls=True, ca_file=cert)

        async def scenario() -> None:
            await until(lambda: double.connected("dev1"))
            double.send_command("dev1", "msg_tls")
            await until(lambda: phone.sends() == 1)

        phone.run(scenario)
    finally:
        double.stop()
