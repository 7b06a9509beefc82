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

from sqlalchemy import bindparam, func, insert, select, update
from sqlmodel import col

from zimsend.server.accounts.credentials import hash_secret, new_id
from zimsend.server.devicelink.transitions import iso, write_event
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.storage import (
    Database,
    Device,
    Message,
    MessageStatus,
    OutboxEvent,
    OutboxStatus,
)
from zimsend.server.storage.shapes import padded
from zimsend.server.storage.tables import table_of

__all__ = [
    "Beat",
    "ConnectRequest",
    "ConnectedDevice",
    "DeviceConfig",
    "HelloInfo",
    "authenticate_device",
    "device_config",
    "record_connects",
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
    #: DeviceCapabilities as a dict; empty when the hello had none (an older agent).
    capabilities: dict[str, Any] = field(default_factory=dict)


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
    #: What the device's last heartbeat said it cannot send for (kept across a reconnect: a
    #: phone that could not send still cannot until its first heartbeat says otherwise).
    cannot_send_reason: str | None = None


@dataclass(frozen=True)
class Beat:
    """One heartbeat (the latest of a device since the last flush)."""

    device_id: str
    connection_id: str
    battery: int | None  # None: the phone does not say (a USB modem has no battery)
    charging: bool
    signal: int | None
    network: str | None  # NetworkRegistration name; None: unknown
    cannot_send_reason: str | None  # None while the phone can send
    at: dt.datetime


def _refused(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_DEVICE_CREDENTIALS, message)


_DEVICES = table_of(Device)
_OUTBOX = table_of(OutboxEvent)

#: Built once: during a reconnect storm this runs for every phone that comes back (thousands a
#: minute), and an ORM `session.get` cost several times the lookup (`zimsend bench`, streams).
_CREDENTIALS = select(
    _DEVICES.c.client_id,
    _DEVICES.c.password_hash,
    _DEVICES.c.is_simulated,
    _DEVICES.c.deleted_at,
    _DEVICES.c.enabled,
).where(_DEVICES.c.id == bindparam("device_id"))
_DELETED = "This device was deleted; add a new device and pair the phone again."


def authenticate_device(
    db: Database, pepper: bytes, client_id: str, device_id: str, password: str
) -> str:
    """The id of the device these credentials open, or ApiError (INVALID_DEVICE_CREDENTIALS,
    DEVICE_DISABLED). The password is checked first and in constant time, so nothing about a
    device (deleted, disabled) is revealed to someone who does not hold its password."""
    bad = _refused(
        "Invalid device credentials: check x-client-id, x-device-id and x-device-password "
        "(re-pair the phone with a new pairing URI if the password was rotated)."
    )
    if not (client_id and device_id and password):
        raise bad
    offered = hash_secret(pepper, password).encode()
    with db.engine.connect() as connection:
        device = connection.execute(_CREDENTIALS, {"device_id": device_id}).first()
    if device is None:
        hmac.compare_digest(offered, offered)  # same work as a real comparison
        raise bad
    same_password = hmac.compare_digest(offered, device.password_hash.encode())
    same_client = hmac.compare_digest(client_id.encode(), device.client_id.encode())
    if not (same_password and same_client) or device.is_simulated:
        raise bad
    if device.deleted_at is not None:
        raise _refused(_DELETED)
    if not device.enabled:
        raise ApiError(
            ErrorCode.DEVICE_DISABLED,
            "This device is disabled; enable it (PATCH /v1/devices/{device_id}) to reconnect.",
        )
    return device_id


def device_config(device: Device) -> DeviceConfig:
    """The settings a connected phone's session follows, read from its row."""
    return DeviceConfig(
        enabled=device.enabled,
        send_interval_ms=device.send_interval_ms,
        daily_cap=device.daily_cap,
        password_hash=device.password_hash,
        deleted=device.deleted_at is not None,
    )


def _config(row: Any) -> DeviceConfig:
    """`device_config` for a Core row (enabled, send_interval_ms, daily_cap, password_hash,
    deleted_at)."""
    return DeviceConfig(
        enabled=row.enabled,
        send_interval_ms=row.send_interval_ms,
        daily_cap=row.daily_cap,
        password_hash=row.password_hash,
        deleted=row.deleted_at is not None,
    )


@dataclass(frozen=True)
class ConnectRequest:
    """One welcomed stream to record (see `record_connects`)."""

    device_id: str
    connection_id: str
    hello: HelloInfo
    ip_address: str | None


def _or_kept(name: str) -> Any:
    """What the phone said, or the stored value when it said nothing (an empty hello field)."""
    return func.coalesce(func.nullif(bindparam(f"c_{name}"), ""), _DEVICES.c[name])


#: One Core statement built once (as `_BEAT`): marks the device online under the new
#: connection and returns what the session needs; no row when the device was deleted.
_CONNECT = (
    update(_DEVICES)
    .where(_DEVICES.c.id == bindparam("c_device_id"), _DEVICES.c.deleted_at.is_(None))
    .values(
        online=True,
        connection_id=bindparam("c_connection_id"),
        replica_id=bindparam("c_replica_id"),
        connected_at=bindparam("c_now"),
        last_seen_at=bindparam("c_now"),
        ip_address=bindparam("c_ip_address"),
        model=_or_kept("model"),
        android_version=_or_kept("android_version"),
        app_version=_or_kept("app_version"),
        phone_number=_or_kept("phone_number"),
        sims=bindparam("c_sims", type_=_DEVICES.c.sims.type),
        capabilities=bindparam("c_capabilities", type_=_DEVICES.c.capabilities.type),
    )
    .returning(
        _DEVICES.c.client_id,
        _DEVICES.c.name,
        _DEVICES.c.phone_number,
        _DEVICES.c.android_version,
        _DEVICES.c.app_version,
        _DEVICES.c.enabled,
        _DEVICES.c.send_interval_ms,
        _DEVICES.c.daily_cap,
        _DEVICES.c.password_hash,
        _DEVICES.c.deleted_at,
        _DEVICES.c.last_send_at,
        _DEVICES.c.sent_day,
        _DEVICES.c.sent_on_day,
        _DEVICES.c.cannot_send_reason,
    )
)
_EVENTS = insert(_OUTBOX)


def record_connects(
    db: Database, replica_id: str, requests: list[ConnectRequest], now: dt.datetime
) -> list[ConnectedDevice | ApiError]:
    """Mark each device online under its `connection_id` and write its `device.connected`,
    all in one transaction (group commit, as heartbeats: a reconnect storm of thousands of
    phones is a few dozen transactions, not thousands). Returns, in order, each device's
    settings and the messages to re-offer — or the ApiError for a device deleted meanwhile."""
    out: list[ConnectedDevice | ApiError] = []
    if not requests:
        return out
    events: list[dict[str, Any]] = []
    with db.write() as session:
        connection = session.connection()
        rows: list[Any] = []
        for r in requests:
            rows.append(
                connection.execute(
                    _CONNECT,
                    {
                        "c_device_id": r.device_id,
                        "c_connection_id": r.connection_id,
                        "c_replica_id": replica_id,
                        "c_now": now,
                        "c_ip_address": r.ip_address,
                        "c_model": r.hello.model,
                        "c_android_version": r.hello.android_version,
                        "c_app_version": r.hello.app_version,
                        "c_phone_number": r.hello.phone_number,
                        "c_sims": r.hello.sims,
                        "c_capabilities": r.hello.capabilities,
                    },
                ).first()
            )
        for r, row in zip(requests, rows, strict=True):
            if row is None:
                continue
            events.append(
                {
                    "id": new_id("evt"),
                    "client_id": row.client_id,
                    "event_type": "device.connected",
                    "webhook_url": None,
                    "status": OutboxStatus.PENDING,
                    "attempts": 0,
                    "created_at": now,
                    "next_attempt_at": now,
                    "payload": {
                        "device_id": r.device_id,
                        "device_name": row.name,
                        "phone_number": row.phone_number,
                        "android_version": row.android_version,
                        "app_version": row.app_version,
                        "connected_at": iso(now),
                        "ip_address": r.ip_address,
                    },
                }
            )
        if events:
            connection.execute(_EVENTS, events)
        processing: dict[str, list[Message]] = {}
        for message in session.scalars(
            select(Message)
            .where(
                col(Message.device_id).in_(padded([r.device_id for r in requests])),
                col(Message.status) == MessageStatus.PROCESSING,
            )
            .order_by(col(Message.priority), col(Message.processing_at), col(Message.id))
        ):
            processing.setdefault(message.device_id or "", []).append(message)
    for r, row in zip(requests, rows, strict=True):
        out.append(
            _refused(_DELETED)
            if row is None
            else ConnectedDevice(
                device_id=r.device_id,
                client_id=row.client_id,
                name=row.name,
                config=_config(row),
                last_send_at=row.last_send_at,
                sent_day=row.sent_day,
                sent_on_day=row.sent_on_day,
                processing=processing.get(r.device_id, []),
                cannot_send_reason=row.cannot_send_reason,
            )
        )
    return out


def record_disconnect(
    db: Database,
    *,
    device_id: str,
    connection_id: str,
    reason: str,
    now: dt.datetime,
    detail: str | None = None,
) -> bool:
    """Mark the device offline if `connection_id` is still its current, online connection,
    and write `device.disconnected` (SPEC §7 reasons). False when a newer connection owns the
    device (then nothing is written)."""
    with db.write() as session:
        row = session.execute(
            update(Device)
            .where(
                col(Device.id) == device_id,
                col(Device.connection_id) == connection_id,
                col(Device.online).is_(True),
            )
            .values(online=False)
            .returning(
                col(Device.client_id),
                col(Device.name),
                col(Device.phone_number),
                col(Device.android_version),
                col(Device.app_version),
                col(Device.last_seen_at),
            )
        ).first()
        if row is None:
            return False
        payload: dict[str, Any] = {
            "device_id": device_id,
            "device_name": row.name,
            "phone_number": row.phone_number,
            "android_version": row.android_version,
            "app_version": row.app_version,
            "disconnected_at": iso(now),
            "reason": reason,
            "last_seen": iso(row.last_seen_at),
        }
        if detail:
            payload["detail"] = detail
        write_event(session, row.client_id, "device.disconnected", payload, now=now)
        return True


#: One Core statement built once: with 10,000 phones the flush runs ~500 of these a second, and
#: building an ORM update per beat cost more than the update (`zimsend bench`, streams).
_BEAT = (
    update(_DEVICES)
    .where(
        _DEVICES.c.id == bindparam("b_device_id"),
        _DEVICES.c.connection_id == bindparam("b_connection_id"),
    )
    .values(
        battery=bindparam("b_battery"),
        charging=bindparam("b_charging"),
        signal=bindparam("b_signal"),
        network=bindparam("b_network"),
        cannot_send_reason=bindparam("b_cannot_send_reason"),
        last_seen_at=bindparam("b_at"),
    )
    .returning(
        _DEVICES.c.enabled,
        _DEVICES.c.send_interval_ms,
        _DEVICES.c.daily_cap,
        _DEVICES.c.password_hash,
        _DEVICES.c.deleted_at,
    )
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
            row = connection.execute(
                _BEAT,
                {
                    "b_device_id": beat.device_id,
                    "b_connection_id": beat.connection_id,
                    "b_battery": beat.battery,
                    "b_charging": beat.charging,
                    "b_signal": beat.signal,
                    "b_network": beat.network,
                    "b_cannot_send_reason": beat.cannot_send_reason,
                    "b_at": beat.at,
                },
            ).first()
            out[beat.device_id] = None if row is None else _config(row)
    return out
