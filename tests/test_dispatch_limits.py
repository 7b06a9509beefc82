"""Dispatch limits applied live to connected phones (issue 5 item 5): a daily cap and disabling
hold messages back until lifted; a message pinned with X-Device-ID goes to its phone only.
RawPhones with 1 s heartbeats and no default pacing, so each decision is visible at once.
"""

from __future__ import annotations

import datetime as dt

import pytest
from _devices import RawPhone, Tenant
from _processes import zimsend_env as make_env
from conftest import RunningServer

from zimsend.v1 import common_pb2, sms_pb2

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("dispatch-limits-data"),
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
        ZIMSEND_RATE_LIMIT_PER_MINUTE="100000",
    )


@pytest.fixture(scope="module")
def address(server: RunningServer) -> str:
    return str(server[1])


def phone(address: str, tenant: Tenant, device_id: str, password: str) -> RawPhone:
    return RawPhone(address, tenant.client_id, device_id, password)


def test_daily_cap_and_disabling_hold_messages_back_until_lifted(
    tenant: Tenant, address: str
) -> None:
    device = tenant.create_device()
    raw = phone(address, tenant, device.device_id, device.device_password)
    try:
        raw.hello()
        tenant.update_device(device.device_id, daily_cap=2)
        assert raw.expect("settings").settings.daily_cap == 2
        ids = [tenant.send("+33612345678", f"capped {n}") for n in range(3)]
        got = [raw.expect("send").send.message_id for _ in range(2)]
        assert got == ids[:2]
        with pytest.raises(AssertionError):
            raw.expect("send", timeout=1.5)
        assert tenant.status(ids[2]).status == common_pb2.queued
        tenant.update_device(device.device_id, daily_cap=0)  # no cap: dispatched at once
        assert raw.expect("send").send.message_id == ids[2]
        tenant.update_device(device.device_id, enabled=False)
        later = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)).isoformat()
        held = tenant.send("+33612345678", "held", scheduled_at=later.replace("+00:00", "Z"))
        with pytest.raises(AssertionError):
            raw.expect("send", timeout=2.5)
        tenant.update_device(device.device_id, enabled=True)
        assert raw.expect("send").send.message_id == held
    finally:
        raw.close()


def test_a_pinned_message_goes_to_its_device_only(tenant: Tenant, address: str) -> None:
    one, two = tenant.create_device("one"), tenant.create_device("two")
    first = phone(address, tenant, one.device_id, one.device_password)
    second = phone(address, tenant, two.device_id, two.device_password)
    try:
        first.hello()
        second.hello()
        for _ in range(3):
            reply = tenant.sms.SendSms(
                sms_pb2.SendSmsRequest(to="+33612345678", message="pinned"),
                metadata=tenant.md(device=two.device_id),
                timeout=10,
            )
            assert second.expect("send").send.message_id == reply.message_id
        with pytest.raises(AssertionError):
            first.expect("send", timeout=1.0)
    finally:
        first.close()
        second.close()
