"""What a phone says about its sender, end to end (issue 11, server side): the real Envoy in
front of the real `zimsend serve`, and a phone stream (RawPhone) through Envoy's phone port.

A connected phone whose heartbeat says it cannot send (modem unplugged, SIM PIN, no network)
shows `offline` with its reason on GET /v1/devices, is refused immediate sends (DEVICE_OFFLINE
naming the reason when pinned, NO_DEVICE_AVAILABLE when it was the only phone) and is offered
nothing, not even a message already queued for it; the heartbeat that clears the reason makes
it online again and the queued message is offered at once. No `device.disconnected`: the
stream never went down. Heartbeats are 1 s here.
"""

from __future__ import annotations

import datetime as dt
import queue
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import pytest
from _devices import RawPhone, ServerDb, Tenant, quick_tenant, wait_for
from conftest import Stack

from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb

pytestmark = pytest.mark.slow

UNPLUGGED = "modem not found on /dev/ttyUSB0 (unplugged?)"


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("device-health-data"),
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",  # the tests poll GET /v1/devices
    )


class Rest:
    """One client's REST calls through Envoy."""

    def __init__(self, base_url: str, tenant: Tenant) -> None:
        self.http = httpx.Client(
            base_url=base_url,
            timeout=10,
            headers={"X-API-Key": tenant.live_key, "X-Client-ID": tenant.client_id},
        )

    def create_device(self) -> tuple[str, str]:
        created = self.http.post("/v1/devices", json={"name": "usb modem"}).json()
        return created["device_id"], created["device_password"]

    def device(self, device_id: str) -> dict[str, Any]:
        reply = self.http.get(f"/v1/devices/{device_id}")
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    def send(self, *, device: str | None = None, **body: Any) -> httpx.Response:
        headers = {"X-Device-ID": device} if device else {}
        return self.http.post(
            "/v1/sms/send", headers=headers, json={"to": "+33612345678", "message": "hello", **body}
        )


@pytest.fixture
def rest(
    stack: Stack,
    zimsend_env: dict[str, str],
    device_channel: grpc.Channel,
    request: pytest.FixtureRequest,
) -> Iterator[tuple[Tenant, Rest]]:
    tenant = quick_tenant(zimsend_env, device_channel, request.node.name[:90])
    client = Rest(stack.base_url, tenant)
    yield tenant, client
    client.http.close()


def _sends(phone: RawPhone) -> list[pb.SendCommand]:
    """Every SendCommand the phone has received so far (other frames are dropped)."""
    out: list[pb.SendCommand] = []
    while True:
        try:
            frame = phone.frames.get_nowait()
        except queue.Empty:
            return out
        if frame.WhichOneof("frame") == "send":
            out.append(frame.send)


def _in(seconds: float) -> str:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=seconds)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_phone_that_cannot_send_is_offline_refused_and_offered_nothing_until_it_can(
    rest: tuple[Tenant, Rest], stack: Stack, link_db: ServerDb
) -> None:
    tenant, api = rest
    device_id, password = api.create_device()
    phone = RawPhone(stack.envoy.device_target, tenant.client_id, device_id, password)
    try:
        caps = common_pb2.DeviceCapabilities(
            backend="modem", delivery_reports=True, inbound_sms=True
        )
        phone.hello(capabilities=caps)
        can_send = pb.Heartbeat(signal=3, network=common_pb2.home)  # a USB modem: no battery
        phone.beat(can_send)
        shown = wait_for(
            lambda: (
                (d := api.device(device_id))["status"] == "online"
                and d.get("network") == "home"
                and d
            ),
            5,
            "online on its home network",
        )
        assert shown["capabilities"] == {
            "backend": "modem",
            "delivery_reports": True,
            "inbound_sms": True,
        }
        assert "battery" not in shown
        assert shown["signal"] == 3
        assert shown["cannot_send_reason"] == ""

        # Queued for this phone while it can send; due once it no longer can.
        due_in = 4.0
        queued = api.send(device=device_id, scheduled_at=_in(due_in))
        assert queued.status_code == 200, queued.text
        message_id = queued.json()["message_id"]
        due_at = time.monotonic() + due_in

        phone.beat(
            pb.Heartbeat(signal=0, network=common_pb2.not_registered, cannot_send_reason=UNPLUGGED)
        )
        shown = wait_for(
            lambda: (d := api.device(device_id))["status"] == "offline" and d,
            3,
            "offline with its reason",
        )
        assert shown["cannot_send_reason"] == UNPLUGGED
        assert shown["network"] == "not_registered"
        assert shown["signal"] == 0
        assert shown["capabilities"]["backend"] == "modem"
        listed = api.http.get("/v1/devices").json()["devices"]
        assert [(d["status"], d["cannot_send_reason"]) for d in listed] == [("offline", UNPLUGGED)]

        pinned = api.send(device=device_id)
        assert pinned.status_code == 503, pinned.text
        error = pinned.json()["error"]
        assert error["code"] == "DEVICE_OFFLINE"
        assert UNPLUGGED in error["message"]
        unpinned = api.send()
        assert unpinned.status_code == 503, unpinned.text
        assert unpinned.json()["error"]["code"] == "NO_DEVICE_AVAILABLE"

        # Due, and its phone is connected and polled: still not offered (2 dispatcher polls).
        time.sleep(max(0.0, due_at - time.monotonic()) + 2.0)
        assert _sends(phone) == []
        status = api.http.get(f"/v1/sms/status/{message_id}").json()
        assert status["status"] == "queued", status

        cleared_at = time.monotonic()
        phone.beat(can_send)
        offered = phone.expect("send", timeout=5).send
        assert offered.message_id == message_id
        # At once (the heartbeat makes it ready), not at some later poll.
        assert time.monotonic() - cleared_at < 1.0
        shown = wait_for(
            lambda: (d := api.device(device_id))["status"] == "online" and d, 3, "online again"
        )
        assert shown["cannot_send_reason"] == ""
        assert shown["network"] == "home"
        # The stream stayed up throughout: no webhook says otherwise.
        kinds = [kind for kind, _ in link_db.events(tenant.client_id, "device.")]
        assert kinds == ["device.connected"]
    finally:
        phone.close()


def test_what_an_older_agent_says_and_a_long_reason_is_cut(
    rest: tuple[Tenant, Rest], stack: Stack
) -> None:
    """No capabilities in the hello: none shown; battery given: shown; an unspecified network;
    a reason longer than 200 characters is kept to 200."""
    tenant, api = rest
    device_id, password = api.create_device()
    phone = RawPhone(stack.envoy.device_target, tenant.client_id, device_id, password)
    try:
        phone.hello()
        phone.beat(pb.Heartbeat(battery=55, signal=2))
        shown = wait_for(
            lambda: (d := api.device(device_id)).get("battery") == 55 and d, 5, "the heartbeat"
        )
        assert shown["status"] == "online"
        assert "capabilities" not in shown
        assert "network" not in shown  # an older agent does not say
        phone.beat(pb.Heartbeat(battery=55, signal=2, cannot_send_reason="SIM PIN " + "x" * 300))
        shown = wait_for(
            lambda: (d := api.device(device_id))["status"] == "offline" and d, 3, "offline"
        )
        assert shown["cannot_send_reason"] == ("SIM PIN " + "x" * 300)[:200]
    finally:
        phone.close()


def test_the_reason_outlives_a_reconnect_until_a_heartbeat_clears_it(
    rest: tuple[Tenant, Rest], stack: Stack
) -> None:
    """A phone that could not send reconnects: it is given nothing (not even a due message
    waiting for it) until its first heartbeat says it can. Once the stream is gone the API
    shows plain `offline`, without the old reason."""
    tenant, api = rest
    device_id, password = api.create_device()
    first = RawPhone(stack.envoy.device_target, tenant.client_id, device_id, password)
    try:
        first.hello()
        first.beat(pb.Heartbeat(cannot_send_reason="SIM PIN required"))
        wait_for(
            lambda: api.device(device_id)["cannot_send_reason"] == "SIM PIN required",
            3,
            "the reason",
        )
        queued = api.send(device=device_id, scheduled_at=_in(2.0))
        assert queued.status_code == 200, queued.text
        due_at = time.monotonic() + 2.0
    finally:
        first.close()
    shown = wait_for(
        lambda: (d := api.device(device_id))["cannot_send_reason"] == "" and d, 3, "the stream gone"
    )
    assert shown["status"] == "offline"

    # Silent but alive (pongs, no heartbeat): the kept reason holds the due message back.
    second = RawPhone(
        stack.envoy.device_target, tenant.client_id, device_id, password, heartbeats=False
    )
    try:
        second.hello()
        while time.monotonic() < due_at + 1.5:
            second.send(pong=pb.Pong(nonce="alive"))
            time.sleep(0.5)
        assert _sends(second) == []
        second.beat(pb.Heartbeat(signal=4))
        offered = second.expect("send", timeout=2).send
        assert offered.message_id == queued.json()["message_id"]
    finally:
        second.close()
