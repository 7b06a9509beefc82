"""DeviceService (SPEC §2 management paths) against a real `zimsend serve`.

Create returns a one-time password and a pairing URI; list/get show presence and what the phone
reported; update changes only the fields given, within limits that the error names; delete and
rotate take effect at once; another client's device answers exactly like an unknown one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import grpc
import pytest
from _devices import RawPhone, Tenant, quick_tenant
from _sms import error_reason, message_of
from conftest import RunningServer
from google.protobuf import field_mask_pb2

from zimsend.v1 import common_pb2, devices_pb2
from zimsend.v1 import device_link_pb2 as pb

pytestmark = pytest.mark.slow


def test_create_returns_a_one_time_password_and_a_pairing_uri(
    tenant: Tenant, server: RunningServer, zimsend_env: dict[str, str]
) -> None:
    created = tenant.create_device("  Kitchen phone ")
    assert created.success
    assert created.device_id.startswith("device_")
    assert created.name == "Kitchen phone"
    assert created.client_id == tenant.client_id
    uri = urlparse(created.pairing_uri)
    query = {k: v[0] for k, v in parse_qs(uri.query).items()}
    assert uri.scheme == "zimsend"
    assert query == {
        "server": server[1],
        "client_id": tenant.client_id,
        "device_id": created.device_id,
        "password": created.device_password,
    }
    assert len(created.device_password) >= 20
    db_file = Path(zimsend_env["ZIMSEND_DATA_DIR"]) / "zimsend.db"
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob("zimsend.db*"))
    assert created.device_password.encode() not in raw


def test_list_and_get_show_defaults_presence_and_what_the_phone_said(
    tenant: Tenant, server: RunningServer
) -> None:
    first = tenant.create_device("one")
    second = tenant.create_device("two")
    got = tenant.get_device(first.device_id)
    assert got.status == common_pb2.offline
    assert got.enabled
    assert got.send_interval_ms == 2500
    assert got.daily_cap == 0
    assert not got.HasField("battery")
    assert not got.HasField("last_seen")
    phone = RawPhone(
        server[1], tenant.client_id, second.device_id, second.device_password, heartbeats=False
    )
    try:
        phone.hello(
            android_version="14",
            phone_number="+33611111111",
            sims=[common_pb2.SimSlot(slot=0, carrier="Orange")],
        )
        phone.send(heartbeat=pb.Heartbeat(battery=64, charging=True, signal=3))
        time.sleep(1.5)  # one heartbeat flush
        listed = tenant.devices.ListDevices(
            devices_pb2.ListDevicesRequest(), metadata=tenant.md(), timeout=10
        )
    finally:
        phone.close()
    assert [d.device_id for d in listed.devices] == [first.device_id, second.device_id]
    live = listed.devices[1]
    assert live.status == common_pb2.online
    assert live.battery == 64
    assert live.charging
    assert live.signal == 3
    assert live.android_version == "14"
    assert live.model == "Raw"
    assert live.phone_number == "+33611111111"
    assert live.sims[0].carrier == "Orange"
    assert live.app_version == "raw-1"
    assert live.HasField("last_seen")


def test_update_changes_only_the_given_fields_and_applies_live(
    tenant: Tenant, server: RunningServer
) -> None:
    device = tenant.create_device("before")
    phone = RawPhone(server[1], tenant.client_id, device.device_id, device.device_password)
    try:
        phone.hello()
        updated = tenant.update_device(device.device_id, send_interval_ms=0, daily_cap=500)
        assert updated.device.name == "before"
        assert updated.device.enabled
        assert updated.device.send_interval_ms == 0
        assert updated.device.daily_cap == 500
        settings = phone.expect("settings").settings
        assert (settings.send_interval_ms, settings.daily_cap, settings.enabled) == (0, 500, True)
        renamed = tenant.update_device(device.device_id, name="after")
        assert renamed.device.name == "after"
        assert renamed.device.daily_cap == 500
        masked = tenant.devices.UpdateDevice(
            devices_pb2.UpdateDeviceRequest(
                device_id=device.device_id,
                name="ignored",
                daily_cap=7,
                update_mask=field_mask_pb2.FieldMask(paths=["daily_cap"]),
            ),
            metadata=tenant.md(),
            timeout=10,
        )
        assert masked.device.name == "after"
        assert masked.device.daily_cap == 7
    finally:
        phone.close()


@pytest.mark.parametrize(
    ("fields", "field", "words"),
    [
        ({"send_interval_ms": 3_600_001}, "send_interval_ms", "0-3600000"),
        ({"send_interval_ms": -1}, "send_interval_ms", "0-3600000"),
        ({"daily_cap": 100_001}, "daily_cap", "100000"),
        ({"name": ""}, "name", "1-100"),
    ],
)
def test_update_validation_names_the_field_and_its_limit(
    tenant: Tenant, fields: dict[str, object], field: str, words: str
) -> None:
    device = tenant.create_device()
    with pytest.raises(grpc.RpcError) as caught:
        tenant.update_device(device.device_id, **fields)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "INVALID_REQUEST"
    assert field in message_of(caught.value)
    assert words in message_of(caught.value)


def test_another_clients_device_is_invalid_device_id_everywhere(
    tenant: Tenant, zimsend_env: dict[str, str], device_channel: grpc.Channel
) -> None:
    other = quick_tenant(zimsend_env, device_channel, "other")
    theirs = other.create_device()
    calls: list[Callable[[], object]] = [
        lambda: tenant.get_device(theirs.device_id),
        lambda: tenant.update_device(theirs.device_id, name="mine"),
        lambda: tenant.devices.DeleteDevice(
            devices_pb2.DeleteDeviceRequest(device_id=theirs.device_id), metadata=tenant.md()
        ),
        lambda: tenant.devices.RotateDevicePassword(
            devices_pb2.RotateDevicePasswordRequest(device_id=theirs.device_id),
            metadata=tenant.md(),
        ),
        lambda: tenant.get_device("device_0000000000000000"),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_reason(caught.value) == "INVALID_DEVICE_ID"
    assert other.get_device(theirs.device_id).name == "phone"


def test_a_deleted_device_disappears(tenant: Tenant) -> None:
    device = tenant.create_device()
    reply = tenant.devices.DeleteDevice(
        devices_pb2.DeleteDeviceRequest(device_id=device.device_id), metadata=tenant.md()
    )
    assert reply.success
    assert reply.device_id == device.device_id
    listed = tenant.devices.ListDevices(devices_pb2.ListDevicesRequest(), metadata=tenant.md())
    assert device.device_id not in [d.device_id for d in listed.devices]
    with pytest.raises(grpc.RpcError) as caught:
        tenant.get_device(device.device_id)
    assert error_reason(caught.value) == "INVALID_DEVICE_ID"
