"""The phone's stream against a real `zimsend serve` (issue 4; SPEC §5, §7, §9).

The real trio agent (`zimsend device run --backend simulator`) shows presence and refusals as a
user sees them; a RawPhone drives the protocol corner cases the agent never produces.
Heartbeats are 1 s here, so a silent phone is offline after 3 s.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from _devices import (
    RawPhone,
    ServerDb,
    Tenant,
    new_tenant,
    start_agent,
    wait_for,
)
from _processes import start_server
from _processes import zimsend_env as make_env
from conftest import Admin, RunningServer

from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb

pytestmark = pytest.mark.slow
HEARTBEAT_S = 1


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """This module's servers: 1 s heartbeats, no pacing by default (protocol tests)."""
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("device-link-data"),
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS=str(HEARTBEAT_S),
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",  # the tests poll GetDevice
    )


@pytest.fixture(scope="module")
def address(server: RunningServer) -> str:
    return str(server[1])


def phone(address: str, tenant: Tenant, device_id: str, password: str) -> RawPhone:
    return RawPhone(address, tenant.client_id, device_id, password)


# --- presence with the real agent -------------------------------------------------------------


def test_agent_is_online_within_a_second_and_offline_after_kill_9(
    admin: Admin,
    device_channel: grpc.Channel,
    address: str,
    zimsend_env: dict[str, str],
    link_db: ServerDb,
    tmp_path: Path,
) -> None:
    tenant = new_tenant(admin, device_channel, "acceptance")  # the real admin CLI, end to end
    created = admin(
        "create-device",
        "--client-id",
        tenant.client_id,
        "--name",
        "pixel",
        "--server-address",
        address,
    )
    assert created["pairing_uri"].startswith("zimsend://pair?server=")
    device = tenant.get_device(created["device_id"])
    assert not tenant.online(device.device_id)
    with start_agent(
        zimsend_env,
        address,
        tenant.client_id,
        device.device_id,
        created["device_password"],
        tmp_path,
    ) as agent:
        # The agent's own start-up (imports) is not the server's business: time from the
        # moment the agent says it is connected.
        wait_for(lambda: "connected to" in agent.output(), 30, "the agent to connect")
        connected_at = time.monotonic()
        wait_for(lambda: tenant.online(device.device_id), 1.0, "online within 1 s")
        got = tenant.get_device(device.device_id)
        assert got.model == "ZimSend Simulator"
        assert got.app_version
        assert got.sims[0].carrier
        wait_for(lambda: tenant.get_device(device.device_id).HasField("battery"), 5, "heartbeat")
        agent.kill(signal.SIGKILL)
        killed = time.monotonic()
        wait_for(lambda: not tenant.online(device.device_id), 3 * HEARTBEAT_S + 2, "offline")
        assert time.monotonic() - killed <= 3 * HEARTBEAT_S + 1
        assert killed > connected_at
    wait_for(  # written at the stream's end, which may come after the API says offline
        lambda: link_db.events(tenant.client_id, "device.disconnected"),
        30,
        "device.disconnected written",
    )
    kinds = [(k, p.get("reason")) for k, p in link_db.events(tenant.client_id, "device.")]
    assert kinds == [("device.connected", None), ("device.disconnected", "CONNECTION_LOST")]
    connected = link_db.events(tenant.client_id, "device.connected")[0][1]
    assert connected["device_id"] == device.device_id
    assert connected["device_name"] == "pixel"
    assert connected["ip_address"] == "127.0.0.1"
    assert connected["connected_at"].endswith("Z")
    gone = link_db.events(tenant.client_id, "device.disconnected")[0][1]
    assert gone["last_seen"]
    assert gone["disconnected_at"] >= gone["last_seen"]


def test_a_silent_phone_goes_offline_after_the_missed_heartbeats(
    tenant: Tenant, address: str, link_db: ServerDb
) -> None:
    device = tenant.create_device()
    raw = RawPhone(
        address, tenant.client_id, device.device_id, device.device_password, heartbeats=False
    )
    try:
        welcome = raw.hello()
        assert welcome.settings.heartbeat_interval_seconds == HEARTBEAT_S
        assert tenant.online(device.device_id)
        started = time.monotonic()
        assert raw.ended.wait(3 * HEARTBEAT_S + 3), "the watchdog must cut a silent phone"
        assert time.monotonic() - started >= 3 * HEARTBEAT_S - 0.5
        wait_for(lambda: not tenant.online(device.device_id), 3, "offline")
    finally:
        raw.close()
    # The API says offline once the heartbeats are overdue; the disconnect is written by the
    # stream's end, on the device link's database lane (behind other writes under load).
    wait_for(
        lambda: link_db.events(tenant.client_id, "device.disconnected"),
        30,
        "device.disconnected written",
    )
    ((_, event),) = link_db.events(tenant.client_id, "device.disconnected")
    assert event["reason"] == "CONNECTION_LOST"


# --- refusals ---------------------------------------------------------------------------------


def run_agent_until_exit(
    env: dict[str, str],
    address: str,
    tenant: Tenant,
    device_id: str,
    password: str,
    workdir: Path,
    name: str,
) -> tuple[int | None, str]:
    with start_agent(
        env, address, tenant.client_id, device_id, password, workdir, name=name
    ) as agent:
        wait_for(lambda: not agent.alive(), 20, f"{name} to exit")
        return agent.proc.returncode, agent.output()


def test_a_wrong_password_is_refused_and_the_agent_says_why(
    tenant: Tenant, address: str, zimsend_env: dict[str, str], tmp_path: Path
) -> None:
    device = tenant.create_device()
    code, output = run_agent_until_exit(
        zimsend_env, address, tenant, device.device_id, "not-the-password", tmp_path, "wrong"
    )
    assert code == 3
    assert "INVALID_DEVICE_CREDENTIALS" in output
    assert "wrong device password" in output
    assert not tenant.online(device.device_id)


def test_a_rotated_password_stops_the_connected_phone_and_the_old_one_is_refused(
    tenant: Tenant, address: str, zimsend_env: dict[str, str], tmp_path: Path
) -> None:
    from zimsend.v1 import devices_pb2

    device = tenant.create_device()
    with start_agent(
        zimsend_env,
        address,
        tenant.client_id,
        device.device_id,
        device.device_password,
        tmp_path,
        name="before",
    ) as agent:
        wait_for(lambda: tenant.online(device.device_id), 15, "online")
        rotated = tenant.devices.RotateDevicePassword(
            devices_pb2.RotateDevicePasswordRequest(device_id=device.device_id),
            metadata=tenant.md(),
            timeout=10,
        )
        wait_for(lambda: not agent.alive(), 10, "the agent to stop")
        assert agent.proc.returncode == 4
        assert "password was rotated" in agent.output()
    assert rotated.device_password != device.device_password
    assert "password=" + rotated.device_password in rotated.pairing_uri
    code, output = run_agent_until_exit(
        zimsend_env, address, tenant, device.device_id, device.device_password, tmp_path, "old"
    )
    assert code == 3
    assert "INVALID_DEVICE_CREDENTIALS" in output
    raw = phone(address, tenant, device.device_id, rotated.device_password)
    try:
        raw.hello()  # the new one works
    finally:
        raw.close()


def test_a_disabled_device_is_told_at_once_and_refused_on_reconnect(
    tenant: Tenant, address: str, zimsend_env: dict[str, str], tmp_path: Path
) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        tenant.update_device(device.device_id, enabled=False)
        settings = raw.expect("settings").settings
        assert settings.enabled is False
    finally:
        raw.close()
    code, output = run_agent_until_exit(
        zimsend_env, address, tenant, device.device_id, device.device_password, tmp_path, "disabled"
    )
    assert code == 3
    assert "DEVICE_DISABLED" in output
    assert "disabled" in output


def test_a_deleted_device_is_closed_and_refused(tenant: Tenant, address: str) -> None:
    from zimsend.v1 import devices_pb2

    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        tenant.devices.DeleteDevice(
            devices_pb2.DeleteDeviceRequest(device_id=device.device_id),
            metadata=tenant.md(),
            timeout=10,
        )
        told = raw.expect("reconnect").reconnect
        assert told.reason_code == pb.Reconnect.DEVICE_DELETED
        assert told.reason == "DEVICE_DELETED"  # the deprecated field, for older agents
        assert raw.ended.wait(5)
    finally:
        raw.close()
    again = phone(address, tenant, device.device_id, device.device_password)
    again.send(hello=pb.DeviceHello())
    assert again.ended.wait(5)
    assert again.error is not None
    assert again.error.code() == grpc.StatusCode.UNAUTHENTICATED
    again.close()


def test_the_first_frame_must_be_hello(tenant: Tenant, address: str) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    raw.send(heartbeat=pb.Heartbeat(battery=50))
    assert raw.ended.wait(5)
    assert raw.error is not None
    assert raw.error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hello" in (raw.error.details() or "")
    raw.close()
    assert not tenant.online(device.device_id)


# --- one device, two streams ------------------------------------------------------------------


def test_a_second_connection_replaces_the_first_without_going_offline(
    tenant: Tenant, address: str, link_db: ServerDb
) -> None:
    device = tenant.create_device()
    first = phone(address, tenant, device.device_id, device.device_password)
    second = phone(address, tenant, device.device_id, device.device_password)
    try:
        one = first.hello()
        two = second.hello()
        assert one.session_id != two.session_id
        told = first.expect("reconnect").reconnect
        assert told.reason_code == pb.Reconnect.REPLACED
        assert told.reason == "REPLACED"  # the deprecated field, for older agents
        assert first.ended.wait(5)
        time.sleep(0.5)
        wait_for(lambda: tenant.get_device(device.device_id).battery == 90, 5, "heartbeat")
        assert tenant.online(device.device_id)
    finally:
        first.close()
        second.close()
    kinds = [k for k, _ in link_db.events(tenant.client_id, "device.")]
    assert kinds[:2] == ["device.connected", "device.connected"]
    wait_for(
        lambda: len(link_db.events(tenant.client_id, "device.disconnected")) == 1,
        5,
        "one disconnect, for the second stream only",
    )


# --- commands and reports ---------------------------------------------------------------------


def test_reports_are_idempotent_and_acknowledged_after_storage(
    tenant: Tenant, address: str, link_db: ServerDb
) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        message_id = tenant.send("+33612345678", "hello there")
        command = raw.expect("send").send
        assert command.message_id == message_id
        assert command.body == "hello there"
        assert command.to == "+33612345678"
        assert command.segments == 1
        assert not command.redelivery
        raw.send(ack=pb.CommandAck(command_id=command.command_id, accepted=True))
        sent = pb.StatusReport(
            report_id="r-sent",
            message_id=message_id,
            part_index=0,
            part_count=1,
            outcome=pb.StatusReport.OUTCOME_SENT,
        )
        for _ in range(3):
            raw.send(report=sent)
            assert list(raw.expect("report_ack").report_ack.report_ids) == ["r-sent"]
        assert tenant.status(message_id).status == common_pb2.sent
        delivered = pb.StatusReport(
            report_id="r-dlv",
            message_id=message_id,
            part_index=0,
            part_count=1,
            outcome=pb.StatusReport.OUTCOME_DELIVERED,
        )
        raw.send(report=delivered)
        raw.send(report=delivered)
        acked: list[str] = []  # both acknowledged, in one ReportAck or two (any batching)
        while len(acked) < 2:
            acked += raw.expect("report_ack").report_ack.report_ids
        assert acked == ["r-dlv", "r-dlv"]
        # A late failure of an already delivered message changes nothing either.
        raw.send(
            report=pb.StatusReport(
                report_id="r-late",
                message_id=message_id,
                outcome=pb.StatusReport.OUTCOME_FAILED,
                error_code="NETWORK_ERROR",
            )
        )
        raw.expect("report_ack")
    finally:
        raw.close()
    status = tenant.status(message_id)
    assert status.status == common_pb2.delivered
    assert status.device_id == device.device_id
    events = link_db.events(tenant.client_id, "sms.")
    assert [k for k, _ in events] == ["sms.sent", "sms.delivered"]
    data = events[1][1]
    assert data["message_id"] == message_id
    assert data["status"] == "delivered"
    assert data["to"] == "+33612345678"
    assert data["message"] == "hello there"
    assert data["device_id"] == device.device_id
    assert data["sent_at"]
    assert data["delivered_at"]
    ((sent_count, delivered_count, failed_count),) = link_db.query(
        "SELECT sent, delivered, failed FROM daily_aggregates WHERE device_id = ?",
        device.device_id,
    )
    assert (sent_count, delivered_count, failed_count) == (1, 1, 0)


def test_unacknowledged_messages_are_offered_again_after_a_reconnect(
    tenant: Tenant, address: str
) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    raw.hello()
    message_id = tenant.send("+33612345678", "again")
    first = raw.expect("send").send
    raw.close()  # the link drops before any report
    wait_for(lambda: not tenant.online(device.device_id), 5, "offline")
    again = phone(address, tenant, device.device_id, device.device_password)
    try:
        again.hello(pending_message_ids=[message_id])
        offer = again.expect("send").send
        assert offer.message_id == message_id
        assert offer.redelivery is True
        assert offer.command_id != first.command_id
        again.send(
            report=pb.StatusReport(
                report_id="x",
                message_id=message_id,
                outcome=pb.StatusReport.OUTCOME_FAILED,
                error_code="NO_CREDIT",
                error_message="empty",
            )
        )
        again.expect("report_ack")
    finally:
        again.close()
    status = tenant.status(message_id)
    assert status.status == common_pb2.failed
    assert status.error.code == "NO_CREDIT"


def test_a_refused_command_fails_its_message(
    tenant: Tenant, address: str, link_db: ServerDb
) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        message_id = tenant.send("+33612345678", "no sim")
        command = raw.expect("send").send
        raw.send(
            ack=pb.CommandAck(
                command_id=command.command_id, accepted=False, reason="no SIM in slot 1"
            )
        )
        wait_for(lambda: tenant.status(message_id).status == common_pb2.failed, 5, "failed")
    finally:
        raw.close()
    ((_, data),) = link_db.events(tenant.client_id, "sms.failed")
    assert data["error"]["code"] == "DEVICE_ERROR"
    assert "no SIM" in data["error"]["message"]


def test_a_command_refused_for_a_missing_sim_goes_back_to_the_queue(
    tenant: Tenant, address: str, link_db: ServerDb
) -> None:
    """A refusal that says SIM_MISSING proves nothing was sent: the message is queued again
    for another phone (issue 16 item 1), and this one cools down."""
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        message_id = tenant.send("+33612345678", "slot 1 please", sim_slot=1)
        command = raw.expect("send").send
        raw.send(
            ack=pb.CommandAck(
                command_id=command.command_id,
                accepted=False,
                reason="no SIM in slot 1",
                error_code="SIM_MISSING",
            )
        )
        wait_for(lambda: tenant.status(message_id).attempts == 2, 10, "re-queued")
    finally:
        raw.close()
    status = tenant.status(message_id)
    assert status.status == common_pb2.queued
    assert (status.error.code, status.error.reason) == ("DEVICE_ERROR", "SIM_MISSING")
    ((_, data),) = link_db.events(tenant.client_id, "sms.rerouted")
    assert data["rerouted_from"] == device.device_id
    assert link_db.events(tenant.client_id, "sms.failed") == []
    assert tenant.get_device(device.device_id).HasField("cooling_down_until")


def test_inbound_sms_is_stored_once(tenant: Tenant, address: str, link_db: ServerDb) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        inbound = pb.InboundSmsReport(report_id="in-1", body="STOP", sim_slot=0)
        setattr(inbound, "from", "+33698765432")
        for _ in range(2):
            raw.send(inbound=inbound)
            assert list(raw.expect("report_ack").report_ack.report_ids) == ["in-1"]
    finally:
        raw.close()
    assert link_db.query(
        "SELECT count(*) FROM inbound_messages WHERE device_id = ?", device.device_id
    ) == [(1,)]
    ((_, data),) = link_db.events(tenant.client_id, "sms.received")
    assert data["from"] == "+33698765432"
    assert data["message"] == "STOP"


# --- graceful shutdown ------------------------------------------------------------------------


def test_shutdown_tells_phones_to_reconnect_and_marks_them_offline(
    admin: Admin, zimsend_env: dict[str, str], tmp_path: Path, link_db: ServerDb
) -> None:
    own, own_address = start_server(Path(zimsend_env["ZIMSEND_DATA_DIR"]), zimsend_env, tmp_path)
    with own, grpc.insecure_channel(own_address) as channel:
        tenant = new_tenant(admin, channel, "shutdown")
        device = tenant.create_device()
        raw = phone(own_address, tenant, device.device_id, device.device_password)
        try:
            raw.hello()
            own.kill(signal.SIGTERM)
            frame = raw.expect("reconnect").reconnect
            assert frame.reason == "SERVER_SHUTDOWN"
            assert frame.retry_after_ms >= 500
            wait_for(lambda: not own.alive(), 15, "the server to stop")
        finally:
            raw.close()
    (row,) = link_db.query("SELECT online FROM devices WHERE id = ?", device.device_id)
    assert row == (0,)
    assert [k for k, _ in link_db.events(tenant.client_id, "device.")] == [
        "device.connected",
        "device.disconnected",
    ]
