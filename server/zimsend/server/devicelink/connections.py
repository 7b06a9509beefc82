"""The database side of a phone's stream: credentials, presence rows and `device.*` events.

Why conditional updates everywhere: a device's stream may be replaced (the phone reconnected,
perhaps to another replica) while the old stream is still being torn down. Every presence write
names the `connection_id` it belongs to, so a stale stream can never mark a reconnected device
offline, nor overwrite the newer connection's state (DESIGN "Dispatch", storage `Device`).
"""

from __future__ import annotations

import datetime as dt
import hmac
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlmodel import col

from zimsend.server.devicelink.lifecycle import iso, write_event
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.secrets import hash_secret
from zimsend.server.storage import Database, Device, Message, MessageStatus

__all__ = [
    "Beat",
    "ConnectedDevice",
    "DeviceConfig",
    "HelloInfo",
    "authenticate_device",
    "record_connect",
    "record_disconnect",
    "record_heartbeats",
]


@dataclass(frozen=True)
class DeviceConfig:
    """The settings a connected phone runs with (re-read on every heartbeat flush, so a change
    made through another replica reaches it too)."""

    enabled: bool
    send_interval_ms: int | None  # None: the server default
    daily_cap: int | None  # None or 0: no cap
    password_hash: str
    deleted: bool = False


@dataclass(frozen=True)
class HelloInfo:
    """DeviceHello without protobuf."""

    model: str
    android_version: str
    app_version: str
    phone_number: str
    sims: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class ConnectedDevice:
    """What the hub needs after a connect: identity, settings, pacing state, and the
    messages still `processing` on this device (re-offered with redelivery=true)."""

    device_id: str
    client_id: str
    name: str
    config: DeviceConfig
    last_send_at: dt.datetime | None
    sent_day: dt.date | None
    sent_on_day: int
    processing: list[Message]


@dataclass(frozen=True)
class Beat:
    """One heartbeat (the latest of a device since the last flush)."""

    device_id: str
    connection_id: str
    battery: int
    charging: bool
    signal: int
    at: dt.datetime


def _refused(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_DEVICE_CREDENTIALS, message)


def authenticate_device(
    db: Database, pepper: bytes, client_id: str, device_id: str, password: str
) -> Device:
    """The device these credentials open, or ApiError (INVALID_DEVICE_CREDENTIALS,
    DEVICE_DISABLED). The password is checked first and in constant time, so nothing about a
    device (deleted, disabled) is revealed to someone who does not hold its password."""
    bad = _refused(
        "Invalid device credentials: check x-client-id, x-device-id and x-device-password "
        "(re-pair the phone with a new pairing URI if the password was rotated)."
    )
    if not (client_id and device_id and password):
        raise bad
    offered = hash_secret(pepper, password).encode()
    with db.session() as session:
        device = session.get(Device, device_id)
    if device is None:
        hmac.compare_digest(offered, offered)  # same work as a real comparison
        raise bad
    same_password = hmac.compare_digest(offered, device.password_hash.encode())
    same_client = hmac.compare_digest(client_id.encode(), device.client_id.encode())
    if not (same_password and same_client) or device.is_simulated:
        raise bad
    if device.deleted_at is not None:
        raise _refused("This device was deleted; add a new device and pair the phone again.")
    if not device.enabled:
        raise ApiError(
            ErrorCode.DEVICE_DISABLED,
            "This device is disabled; enable it (PATCH /v1/devices/{device_id}) to reconnect.",
        )
    return device


def device_config(device: Device) -> DeviceConfig:
    """The settings a connected phone's session follows, read from its row."""
    return DeviceConfig(
        enabled=device.enabled, send_interval_ms=device.send_interval_ms,
        daily_cap=device.daily_cap, password_hash=device.password_hash,
        deleted=device.deleted_at is not None,
    )


def record_connect(
    db: Database, *, device_id: str, connection_id: str, replica_id: str, hello: HelloInfo,
    ip_address: str | None, now: dt.datetime,
) -> ConnectedDevice:
    """Mark the device online under `connection_id` and write `device.connected`, in one
    transaction; return its settings and the messages to re-offer."""
    with db.write() as session:
        device = session.get(Device, device_id, with_for_update=True)
        if device is None or device.deleted_at is not None:
            raise _refused("This device was deleted; add a new device and pair the phone again.")
        device.online = True
        device.connection_id = connection_id
        device.replica_id = replica_id
        device.connected_at = now
        device.last_seen_at = now
        device.ip_address = ip_address
        device.model = hello.model or device.model
        device.android_version = hello.android_version or device.android_version
        device.app_version = hello.app_version or device.app_version
        device.phone_number = hello.phone_number or device.phone_number
        device.sims = hello.sims
        session.add(device)
        write_event(session, device.client_id, "device.connected", {
            "device_id": device.id, "device_name": device.name,
            "phone_number": device.phone_number, "android_version": device.android_version,
            "app_version": device.app_version, "connected_at": iso(now),
            "ip_address": ip_address,
        }, now=now)
        processing = list(session.scalars(
            select(Message)
            .where(col(Message.device_id) == device_id,
                   col(Message.status) == MessageStatus.PROCESSING)
            .order_by(col(Message.priority), col(Message.processing_at), col(Message.id))
        ))
        return ConnectedDevice(
            device_id=device.id, client_id=device.client_id, name=device.name,
            config=device_config(device), last_send_at=device.last_send_at, sent_day=device.sent_day,
            sent_on_day=device.sent_on_day, processing=processing,
        )


def record_disconnect(
    db: Database, *, device_id: str, connection_id: str, reason: str, now: dt.datetime,
    detail: str | None = None,
) -> bool:
    """Mark the device offline if `connection_id` is still its current, online connection,
    and write `device.disconnected` (SPEC §7 reasons). False when a newer connection owns the
    device (then nothing is written)."""
    with db.write() as session:
        row = session.execute(
            update(Device)
            .where(col(Device.id) == device_id, col(Device.connection_id) == connection_id,
                   col(Device.online).is_(True))
            .values(online=False)
            .returning(Device.client_id, Device.name, Device.phone_number,
                       Device.android_version, Device.app_version, Device.last_seen_at)
        ).first()
        if row is None:
            return False
        payload: dict[str, Any] = {
            "device_id": device_id, "device_name": row.name, "phone_number": row.phone_number,
            "android_version": row.android_version, "app_version": row.app_version,
            "disconnected_at": iso(now), "reason": reason, "last_seen": iso(row.last_seen_at),
        }
        if detail:
            payload["detail"] = detail
        write_event(session, row.client_id, "device.disconnected", payload, now=now)
        return True


_DEVICES = Device.__table__  # type: ignore[attr-defined]
#: One Core statement built once: with 10,000 phones the flush runs ~500 of these a second, and
#: building an ORM update per beat cost more than the update (`zimsend bench`, streams).
_BEAT = (
    update(_DEVICES)
    .where(_DEVICES.c.id == bindparam("b_device_id"),
           _DEVICES.c.connection_id == bindparam("b_connection_id"))
    .values(battery=bindparam("b_battery"), charging=bindparam("b_charging"),
            signal=bindparam("b_signal"), last_seen_at=bindparam("b_at"))
    .returning(_DEVICES.c.enabled, _DEVICES.c.send_interval_ms, _DEVICES.c.daily_cap,
               _DEVICES.c.password_hash, _DEVICES.c.deleted_at)
)


def record_heartbeats(db: Database, beats: list[Beat]) -> dict[str, DeviceConfig | None]:
    """Store a batch of heartbeats in one transaction (group commit: one write per flush
    whatever the number of phones). Returns, per device, its current settings — or None when
    `connection_id` is no longer its connection (replaced elsewhere: the stream must close)."""
    out: dict[str, DeviceConfig | None] = {}
    if not beats:
        return out
    with db.write() as session:
        connection = session.connection()
        for beat in beats:
            row = connection.execute(_BEAT, {
                "b_device_id": beat.device_id, "b_connection_id": beat.connection_id,
                "b_battery": beat.battery, "b_charging": beat.charging, "b_signal": beat.signal,
                "b_at": beat.at,
            }).first()
            out[beat.device_id] = None if row is None else DeviceConfig(
                enabled=row.enabled, send_interval_ms=row.send_interval_ms,
                daily_cap=row.daily_cap, password_hash=row.password_hash,
                deleted=row.deleted_at is not None,
            )
    return out
