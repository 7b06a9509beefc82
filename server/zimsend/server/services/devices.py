"""DeviceService: add, list, configure and remove the client's phones (SPEC §2 management
paths).

Changes apply live: a phone connected to this replica gets its DeviceSettings frame (or its
Reconnect: deleted, password rotated) before the RPC returns; a phone held by another replica
learns it at that replica's next heartbeat flush (about a second), which re-reads its settings.
Every query is scoped by client: another client's device answers INVALID_DEVICE_ID like an
unknown one.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Any

import grpc
from sqlmodel import col, select

from zimsend.server import accounts
from zimsend.server.auth import Caller
from zimsend.server.devicelink import DeviceHub
from zimsend.server.devicelink.budgets import Budget, effective
from zimsend.server.devicelink.connections import device_config
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.presence import is_connected
from zimsend.server.rpc import public_rpc
from zimsend.server.services.convert import ts
from zimsend.server.state import ServerState
from zimsend.server.storage import Database, Device, utcnow
from zimsend.v1 import common_pb2
from zimsend.v1 import devices_pb2 as pb
from zimsend.v1 import devices_pb2_grpc as pb_grpc
from zimsend.v1.device_link_pb2 import Reconnect

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

MAX_SEND_INTERVAL_MS = 3_600_000
MAX_DAILY_CAP = 100_000
#: Per-SIM send budgets (issue 16 item 5): field -> most parts it may allow.
MAX_PARTS = {"parts_per_minute": 10_000, "parts_per_hour": 100_000, "parts_per_day": 1_000_000}
_UPDATABLE = ("name", "enabled", "send_interval_ms", "daily_cap", *MAX_PARTS)


def _not_found(device_id: str) -> ApiError:
    return ApiError.invalid(
        ErrorCode.INVALID_DEVICE_ID,
        "device_id",
        f"No device {device_id!r} for this client; list them with GET /v1/devices.",
    )


def _owned(db_session: Any, client_id: str, device_id: str) -> Device:
    device = db_session.get(Device, device_id) if device_id else None
    if device is None or device.client_id != client_id or device.deleted_at is not None:
        raise _not_found(device_id)
    assert isinstance(device, Device)
    return device


_NETWORKS = frozenset(common_pb2.NetworkRegistration.keys())


def _network(name: str | None) -> common_pb2.NetworkRegistration.ValueType | None:
    """The stored NetworkRegistration name as the enum; None (field absent) when unknown."""
    if name is None or name not in _NETWORKS or name == "NETWORK_REGISTRATION_UNSPECIFIED":
        return None
    return common_pb2.NetworkRegistration.Value(name)


def _list(db: Database, client_id: str) -> list[Device]:
    with db.session() as session:
        return list(
            session.exec(
                select(Device)
                .where(col(Device.client_id) == client_id, col(Device.deleted_at).is_(None))
                .order_by(col(Device.created_at), col(Device.id))
            ).all()
        )


def _get(db: Database, client_id: str, device_id: str) -> Device:
    with db.session() as session:
        return _owned(session, client_id, device_id)


def _update(db: Database, client_id: str, device_id: str, changes: dict[str, Any]) -> Device:
    with db.write() as session:
        device = _owned(session, client_id, device_id)
        for name, value in changes.items():
            setattr(device, name, value)
        session.add(device)
        session.flush()
        session.refresh(device)
        return device


def _delete(db: Database, client_id: str, device_id: str) -> Device:
    with db.write() as session:
        device = _owned(session, client_id, device_id)
        device.deleted_at = utcnow()
        device.enabled = False
        session.add(device)
        return device


def validate_update(request: pb.UpdateDeviceRequest) -> dict[str, Any]:
    """The changes an UpdateDevice asks for: fields named in `update_mask`, else the fields
    present in the request. Each invalid value is an error naming the field and its limit."""
    if request.HasField("update_mask") and request.update_mask.paths:
        paths = list(request.update_mask.paths)
        unknown = [p for p in paths if p not in _UPDATABLE]
        if unknown:
            raise ApiError.invalid(
                ErrorCode.INVALID_REQUEST,
                "update_mask",
                f"update_mask names {', '.join(unknown)}; it may name {', '.join(_UPDATABLE)}.",
            )
    else:
        present = {field.name for field, _ in request.ListFields()}  # all `optional` fields
        paths = [name for name in _UPDATABLE if name in present]
    changes: dict[str, Any] = {}
    for name in paths:
        value = getattr(request, name)
        if name == "name":
            value = accounts.check_name(value)
        elif name == "send_interval_ms" and not 0 <= value <= MAX_SEND_INTERVAL_MS:
            raise ApiError.invalid(
                ErrorCode.INVALID_REQUEST,
                name,
                f"send_interval_ms must be 0-{MAX_SEND_INTERVAL_MS} milliseconds (got {value}).",
            )
        elif name == "daily_cap" and not 0 <= value <= MAX_DAILY_CAP:
            raise ApiError.invalid(
                ErrorCode.INVALID_REQUEST,
                name,
                f"daily_cap must be 0 (no cap) to {MAX_DAILY_CAP} (got {value}).",
            )
        elif name in MAX_PARTS and not 0 <= value <= MAX_PARTS[name]:
            raise ApiError.invalid(
                ErrorCode.INVALID_REQUEST,
                name,
                f"{name} must be 0 (no limit) to {MAX_PARTS[name]} SMS parts (got {value}).",
            )
        changes[name] = value
    return changes


class DeviceService(pb_grpc.DeviceServiceServicer):
    def __init__(self, state: ServerState, server_address: str) -> None:
        self.state = state
        self.hub = DeviceHub.of(state)
        self.server_address = state.settings.device_link_address or server_address

    def _fields(self, device: Device, now: dt.datetime) -> dict[str, Any]:
        settings = self.state.settings
        connected = device.is_simulated or is_connected(device, now, settings.offline_after_seconds)
        # A connected phone that says it cannot send is `offline` for sending, and says why;
        # once its stream is gone the reason is history, not news (`offline` says enough).
        reason = (device.cannot_send_reason or "") if connected else ""
        online = connected and not reason
        interval = device.send_interval_ms
        fields: dict[str, Any] = dict(
            device_id=device.id,
            name=device.name,
            status=common_pb2.online if online else common_pb2.offline,
            enabled=device.enabled,
            last_seen=ts(device.last_seen_at),
            charging=bool(device.charging),
            app_version=device.app_version or "",
            android_version=device.android_version or "",
            phone_number=device.phone_number or "",
            sims=[
                common_pb2.SimSlot(
                    slot=int(s.get("slot", 0)),
                    carrier=s.get("carrier") or "",
                    phone_number=s.get("phone_number") or "",
                )
                for s in device.sims or []
            ],
            send_interval_ms=settings.default_send_interval_ms if interval is None else interval,
            daily_cap=device.daily_cap or 0,
            model=device.model or "",
            created_at=ts(device.created_at),
            network=_network(device.network),
            cannot_send_reason=reason,
            **self._budget(device, now),
        )
        if device.capabilities:
            fields["capabilities"] = common_pb2.DeviceCapabilities(
                backend=str(device.capabilities.get("backend") or ""),
                delivery_reports=bool(device.capabilities.get("delivery_reports")),
                inbound_sms=bool(device.capabilities.get("inbound_sms")),
            )
        if device.battery is not None:
            fields["battery"] = device.battery
        if device.signal is not None:
            fields["signal"] = device.signal
        return fields

    def _budget(self, device: Device, now: dt.datetime) -> dict[str, Any]:
        """The device's per-SIM budget as it applies (its own values, else the server's)
        and its cool-down while it lasts."""
        settings = self.state.settings
        own = (device.parts_per_minute, device.parts_per_hour, device.parts_per_day)
        defaults = Budget(
            settings.default_parts_per_minute,
            settings.default_parts_per_hour,
            settings.default_parts_per_day,
        )
        budget = effective(
            own, device.send_interval_ms, defaults, settings.default_send_interval_ms
        )
        fields: dict[str, Any] = dict(zip(MAX_PARTS, budget.limits, strict=True))
        if device.cooling_down_until is not None and device.cooling_down_until > now:
            fields["cooling_down_until"] = ts(device.cooling_down_until)
        return fields

    def _device(self, device: Device, now: dt.datetime) -> pb.Device:
        return pb.Device(**self._fields(device, now))

    @public_rpc
    async def CreateDevice(  # noqa: N802
        self,
        request: pb.CreateDeviceRequest,
        context: grpc.aio.ServicerContext[pb.CreateDeviceRequest, pb.CreateDeviceResponse],
        caller: Caller,
    ) -> pb.CreateDeviceResponse:
        new = await self.state.db_call(
            accounts.create_device,
            self.state.db,
            self.state.pepper,
            caller.client_id,
            request.name,
            server_address=self.server_address,
            tls=self.state.settings.device_link_tls,
        )
        return pb.CreateDeviceResponse(
            success=True,
            device_id=new.device.id,
            name=new.device.name,
            device_password=new.password,
            pairing_uri=new.pairing_uri,
            client_id=caller.client_id,
        )

    @public_rpc
    async def ListDevices(  # noqa: N802
        self,
        request: pb.ListDevicesRequest,
        context: grpc.aio.ServicerContext[pb.ListDevicesRequest, pb.ListDevicesResponse],
        caller: Caller,
    ) -> pb.ListDevicesResponse:
        devices = await self.state.db_call(_list, self.state.db, caller.client_id)
        now = utcnow()
        return pb.ListDevicesResponse(success=True, devices=[self._device(d, now) for d in devices])

    @public_rpc
    async def GetDevice(  # noqa: N802
        self,
        request: pb.GetDeviceRequest,
        context: grpc.aio.ServicerContext[pb.GetDeviceRequest, pb.GetDeviceResponse],
        caller: Caller,
    ) -> pb.GetDeviceResponse:
        device = await self.state.db_call(_get, self.state.db, caller.client_id, request.device_id)
        return pb.GetDeviceResponse(success=True, **self._fields(device, utcnow()))

    @public_rpc
    async def UpdateDevice(  # noqa: N802
        self,
        request: pb.UpdateDeviceRequest,
        context: grpc.aio.ServicerContext[pb.UpdateDeviceRequest, pb.UpdateDeviceResponse],
        caller: Caller,
    ) -> pb.UpdateDeviceResponse:
        changes = validate_update(request)
        device = await self.state.db_call(
            _update, self.state.db, caller.client_id, request.device_id, changes
        )
        self.hub.apply_config(device.id, device_config(device))
        if any(name in MAX_PARTS for name in changes):
            # A budget is read by the claim, not kept in the session's settings: the phone
            # (if it is here) is looked at again now, not when its current wait ends.
            session = self.hub.sessions.get(device.id)
            if session is not None and not session.closed:
                self.hub.dispatcher.settings_changed(session)
        return pb.UpdateDeviceResponse(success=True, device=self._device(device, utcnow()))

    @public_rpc
    async def DeleteDevice(  # noqa: N802
        self,
        request: pb.DeleteDeviceRequest,
        context: grpc.aio.ServicerContext[pb.DeleteDeviceRequest, pb.DeleteDeviceResponse],
        caller: Caller,
    ) -> pb.DeleteDeviceResponse:
        device = await self.state.db_call(
            _delete, self.state.db, caller.client_id, request.device_id
        )
        self.hub.close_device(device.id, Reconnect.DEVICE_DELETED)
        return pb.DeleteDeviceResponse(success=True, device_id=device.id)

    @public_rpc
    async def RotateDevicePassword(  # noqa: N802
        self,
        request: pb.RotateDevicePasswordRequest,
        context: grpc.aio.ServicerContext[
            pb.RotateDevicePasswordRequest, pb.RotateDevicePasswordResponse
        ],
        caller: Caller,
    ) -> pb.RotateDevicePasswordResponse:
        if not request.device_id:
            raise _not_found(request.device_id)
        new = await self.state.db_call(
            accounts.rotate_device_password,
            self.state.db,
            self.state.pepper,
            caller.client_id,
            request.device_id,
            server_address=self.server_address,
            tls=self.state.settings.device_link_tls,
        )
        self.hub.close_device(new.device.id, Reconnect.PASSWORD_ROTATED)
        return pb.RotateDevicePasswordResponse(
            success=True,
            device_id=new.device.id,
            device_password=new.password,
            pairing_uri=new.pairing_uri,
        )


def register(server: ZimSendServer) -> str:
    service = DeviceService(server.state, server.address)
    pb_grpc.add_DeviceServiceServicer_to_server(service, server.grpc_server)
    return "zimsend.v1.DeviceService"
