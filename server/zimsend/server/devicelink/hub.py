"""DeviceHub: the phones connected to this replica, their presence, and what they report.

One hub per server process (`DeviceHub.of(state)`), owning:
- the live map device id → `DeviceSession` (a second connection of a device replaces the
  first: the old stream gets Reconnect(REPLACED) and its end does not mark the device offline,
  because every presence write is conditional on the connection id);
- the watchdog: a phone silent for `missed_heartbeats_before_offline` × the heartbeat interval
  is cut (`device.disconnected`, CONNECTION_LOST) even if TCP never noticed;
- the heartbeat flusher: the latest heartbeat of every phone, written in one transaction per
  flush, which also re-reads each phone's settings so a change made through another replica
  (rename, pacing, disable, delete, password rotation) reaches the phone within one flush; it
  keeps its timer (a flush every half heartbeat writes each phone's latest beat once, where a
  queue would write every beat), and a failed flush is retried beat by beat by the shared
  `commit_each`;
- the connect writer: streams that said hello are recorded (presence row + `device.connected`)
  in one transaction per batch, as heartbeats are — during a reconnect storm one transaction
  per phone made the write lock the limit (docs/benchmarks.md, `aced0d2`); the shared
  group-commit helper's `AsyncLane` (`storage.group_commit`) runs it;
- the report writer (group commit) and the dispatcher.

Management RPCs call `apply_config` / `close_device` for phones on this replica.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import os
import secrets
import socket
import time
from collections.abc import Coroutine, Sequence
from typing import Any

from zimsend.server import failures, logs
from zimsend.server.accounts import credentials
from zimsend.server.devicelink.assignment import send_command
from zimsend.server.devicelink.connections import (
    Beat,
    ConnectedDevice,
    ConnectRequest,
    DeviceConfig,
    HelloInfo,
    record_connects,
    record_disconnect,
    record_heartbeats,
)
from zimsend.server.devicelink.dispatcher import Dispatcher
from zimsend.server.devicelink.reports import ReportWriter, inbound_item, status_report
from zimsend.server.devicelink.session import CommandRecord, DeviceSession
from zimsend.server.devicelink.transitions import PartReport
from zimsend.server.errors import ApiError
from zimsend.server.state import ServerState
from zimsend.server.storage import utcnow, wakeups
from zimsend.server.storage.group_commit import AsyncLane, commit_each
from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["DeviceHub"]

log = logs.get("zimsend.devicelink.hub")

#: How long shutdown waits for phones to leave after Reconnect(SERVER_SHUTDOWN).
SHUTDOWN_WAIT_S = 1.5
SHUTDOWN_RETRY_AFTER_MS = 1000
#: Longest report id (and message id) stored: longer ones are ignored, never stored nor echoed
#: back in a ReportAck (device_link.proto); the agent's ids are about 40 characters.
MAX_REPORT_ID_CHARS = 128
#: Connects recorded per transaction at most (one `IN (...)` for their `processing` messages).
CONNECT_BATCH = 500
#: Longest `cannot_send_reason` kept (it is shown on GET /v1/devices and in DEVICE_OFFLINE).
CANNOT_SEND_REASON_MAX = 200


class DeviceHub:
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.replica_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self.sessions: dict[str, DeviceSession] = {}
        self.dispatcher = Dispatcher(state, self.sessions)
        self.reports = ReportWriter(state, self.dispatcher.applied)
        self._locks: dict[str, asyncio.Lock] = {}
        self._beats: dict[str, Beat] = {}
        #: Welcomed streams to record; a deleted device's connect fails with its ApiError.
        self._connects: AsyncLane[ConnectRequest, ConnectedDevice] = AsyncLane(
            "connects", self._write_connects, max_batch=CONNECT_BATCH
        )
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loops: list[asyncio.Task[Any]] = []
        self._closing = False

    @classmethod
    def of(cls, state: ServerState) -> DeviceHub:
        """The process's hub (created on first use; DeviceService and DeviceLinkService share
        it)."""
        if state.device_hub is None:
            state.device_hub = cls(state)
        return state.device_hub

    @property
    def closing(self) -> bool:
        """Shutting down: new streams are turned away (UNAVAILABLE), phones retry elsewhere."""
        return self._closing

    @property
    def heartbeat_seconds(self) -> int:
        """The interval phones are told (DeviceSettings has whole seconds)."""
        return max(1, math.ceil(self.state.settings.heartbeat_interval_seconds))

    @property
    def offline_after(self) -> float:
        return self.heartbeat_seconds * self.state.settings.missed_heartbeats_before_offline

    # --- lifetime ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.state.new_work.subscribe(self.dispatcher.wake)
        # Other replicas' new work (PostgreSQL NOTIFY): a round for that client at once.
        listen = wakeups.listen_in_loop(
            self.state.db,
            {wakeups.WORK_CHANNEL: self.dispatcher.wake},
            on_reconnect=self.dispatcher.wake,
        )
        for coro in (
            listen,
            self.dispatcher.run(),
            self.reports.run(),
            self._watchdog(),
            self._flush_heartbeats_forever(),
            self._connects.run(),
        ):
            self._loops.append(asyncio.create_task(coro))

    async def shutdown(self) -> None:
        """Tell every phone to reconnect (elsewhere), wait briefly, store what is pending and
        mark the phones that did not leave in time offline."""
        self._closing = True
        sessions = list(self.sessions.values())
        for session in sessions:
            session.close(
                reconnect=pb.Reconnect.SERVER_SHUTDOWN,
                retry_after_ms=SHUTDOWN_RETRY_AFTER_MS,
                disconnect_reason="UNKNOWN",
                detail="server shutdown",
            )
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_WAIT_S)
        for session in sessions:
            self.detach(session)
        await self.reports.flush()
        await self._flush_heartbeats()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=SHUTDOWN_WAIT_S)
        for task in self._loops:
            task.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._connects.cancel_waiting()  # never written: their streams end with the server
        await self.dispatcher.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- streams -----------------------------------------------------------------------------

    async def connect(
        self,
        device_id: str,
        hello: pb.DeviceHello,
        ip_address: str | None,
        task: asyncio.Task[Any] | None,
    ) -> DeviceSession:
        """Register a welcomed stream: presence row + `device.connected`, replace an older
        stream of the same device, send Welcome, re-offer its `processing` messages.
        ApiError when the device was deleted meanwhile."""
        info = HelloInfo(
            model=hello.model[:100],
            android_version=hello.android_version[:50],
            app_version=hello.app_version[:50],
            phone_number=hello.phone_number[:20],
            sims=[
                {"slot": s.slot, "carrier": s.carrier[:50], "phone_number": s.phone_number[:20]}
                for s in hello.sims[:4]
            ],
            capabilities=_capabilities(hello),
        )
        lock = self._locks.setdefault(device_id, asyncio.Lock())
        async with lock:
            connection_id = f"conn_{secrets.token_hex(8)}"
            connected = await self._connects.submit(
                ConnectRequest(device_id, connection_id, info, ip_address)
            )
            session = DeviceSession(
                device_id=device_id,
                client_id=connected.client_id,
                connection_id=connection_id,
                name=connected.name,
                config=connected.config,
                ip_address=ip_address,
                task=task,
                sent_day=connected.sent_day,
                sent_on_day=connected.sent_on_day,
                cannot_send_reason=connected.cannot_send_reason or "",
            )
            old = self.sessions.get(device_id)
            self.sessions[device_id] = session
        if old is not None:
            old.close(reconnect=pb.Reconnect.REPLACED, disconnect_reason="")
        session.next_send_at = self._pacing_start(session, connected.last_send_at)
        default_ms = self.state.settings.default_send_interval_ms
        session.push(
            pb.ServerFrame(
                welcome=pb.Welcome(
                    device_id=device_id,
                    session_id=connection_id,
                    settings=session.settings_frame(default_ms, self.heartbeat_seconds),
                )
            )
        )
        session.ready = True
        redeliver = [
            send_command(m, self.state.pepper, redelivery=True) for m in connected.processing
        ]
        self.dispatcher.session_ready(session, redeliver)
        log.info(
            "device.connected",
            device_id=device_id,
            connection_id=connection_id,
            redelivered=len(redeliver),
        )
        return session

    async def _write_connects(
        self, batch: list[ConnectRequest]
    ) -> Sequence[ConnectedDevice | BaseException]:
        """One transaction for every connect queued; each waiter gets its own outcome (a
        failed batch is retried connect by connect; a connect that still fails fails alone:
        its phone retries)."""
        db, replica_id, now = self.state.db, self.replica_id, utcnow()
        return await self.state.link_call(
            commit_each,
            batch,
            lambda requests: record_connects(db, replica_id, list(requests), now),
            lambda request: _one(record_connects(db, replica_id, [request], now)),
            name="connects",
        )

    def _pacing_start(self, session: DeviceSession, last_send_at: dt.datetime | None) -> float:
        """Pacing survives reconnects: the first send waits for the interval since the last."""
        if last_send_at is None:
            return 0.0
        interval = session.interval_ms(self.state.settings.default_send_interval_ms) / 1000
        wait = interval - (utcnow() - last_send_at).total_seconds()
        return time.monotonic() + max(0.0, min(wait, interval))

    def detach(self, session: DeviceSession) -> None:
        """The stream ended (any way): forget it; mark the device offline if this was still its
        current connection. Synchronous, so it can run in a cancelled handler's `finally`."""
        if self.sessions.get(session.device_id) is session:
            del self.sessions[session.device_id]
        beat = self._beats.get(session.device_id)
        if beat is not None and beat.connection_id == session.connection_id:
            del self._beats[session.device_id]
        session.closed = True
        if session.detached:
            return
        session.detached = True
        if session.disconnect_reason:  # empty when replaced: the newer stream owns presence
            self._spawn(
                self._record_disconnect(
                    session, session.disconnect_reason, session.disconnect_detail
                )
            )

    async def _record_disconnect(
        self, session: DeviceSession, reason: str, detail: str | None
    ) -> None:
        try:
            changed = await self.state.db_call(
                record_disconnect,
                self.state.db,
                device_id=session.device_id,
                connection_id=session.connection_id,
                reason=reason,
                now=utcnow(),
                detail=detail,
            )
        except Exception as exc:
            logs.failure(log, "device.disconnect_not_recorded", exc, device_id=session.device_id)
            return
        if changed:
            log.info(
                "device.disconnected", device_id=session.device_id, reason=reason, detail=detail
            )

    def on_frame(self, session: DeviceSession, frame: pb.DeviceFrame) -> None:
        """Handle one frame from a phone (never raises into the stream reader)."""
        session.touch()
        kind = frame.WhichOneof("frame")
        if kind == "heartbeat":
            hb = frame.heartbeat
            reason = hb.cannot_send_reason.strip()[:CANNOT_SEND_REASON_MAX]
            self._beats[session.device_id] = Beat(
                device_id=session.device_id,
                connection_id=session.connection_id,
                battery=max(0, min(100, hb.battery)) if hb.HasField("battery") else None,
                charging=hb.charging,
                signal=max(0, min(4, hb.signal)) if hb.HasField("signal") else None,
                network=_network_name(hb.network),
                cannot_send_reason=reason or None,
                at=utcnow(),
            )
            if reason != session.cannot_send_reason:
                session.cannot_send_reason = reason
                log.info(
                    "device.cannot_send" if reason else "device.can_send",
                    device_id=session.device_id,
                    reason=reason or None,
                )
                self.dispatcher.can_send_changed(session)
        elif kind == "report":
            report = status_report(frame.report)
            if (
                report is not None
                and 0 < len(report.report_id) <= MAX_REPORT_ID_CHARS
                and 0 < len(report.message_id) <= MAX_REPORT_ID_CHARS
            ):
                self.reports.submit(session, report)
        elif kind == "inbound":
            if 0 < len(frame.inbound.report_id) <= MAX_REPORT_ID_CHARS:
                self.reports.submit(session, inbound_item(frame.inbound))
        elif kind == "ack":
            refused = self.dispatcher.command_acked(session, frame.ack)
            if refused is not None:
                log.info(
                    "command.refused",
                    device_id=session.device_id,
                    message_id=refused,
                    reason=frame.ack.reason,
                )
                # Its FailureCode, if the phone gave one (SIM_MISSING: failover may re-route it).
                self.reports.submit(
                    session,
                    PartReport(
                        report_id=f"refused.{frame.ack.command_id}",
                        message_id=refused,
                        outcome="failed",
                        error_code=failures.normalise(frame.ack.error_code),
                        error_message=f"The phone refused the message: {frame.ack.reason[:200]}",
                    ),
                    ack=False,
                )
        # pong: liveness only (touch above); a repeated hello is ignored.

    # --- management --------------------------------------------------------------------------

    def apply_config(self, device_id: str, config: DeviceConfig) -> None:
        """New settings for a device; a connected phone gets a DeviceSettings frame at once
        (or is told to leave, if the device was deleted or its password rotated)."""
        session = self.sessions.get(device_id)
        if session is None or session.closed:
            return
        if config.deleted:
            self.close_device(device_id, pb.Reconnect.DEVICE_DELETED)
            return
        if config.password_hash != session.config.password_hash:
            self.close_device(device_id, pb.Reconnect.PASSWORD_ROTATED)
            return
        if config == session.config:
            return
        session.config = config
        default_ms = self.state.settings.default_send_interval_ms
        session.push(
            pb.ServerFrame(settings=session.settings_frame(default_ms, self.heartbeat_seconds))
        )
        self.dispatcher.settings_changed(session)

    def cancel(self, device_id: str, message_id: str) -> bool:
        """Ask a connected phone not to send `message_id` if it has not yet (CancelCommand;
        its CommandAck says whether it was in time). False when the phone is not here."""
        session = self.sessions.get(device_id)
        if session is None or session.closed:
            return False
        command_id = credentials.new_id("cmd")
        session.commands[command_id] = CommandRecord("cancel", message_id)
        return session.push(
            pb.ServerFrame(cancel=pb.CancelCommand(command_id=command_id, message_id=message_id))
        )

    def close_device(self, device_id: str, reason: pb.Reconnect.Reason.ValueType) -> None:
        """Close a device's stream with Reconnect(reason): DEVICE_DELETED, PASSWORD_ROTATED."""
        session = self.sessions.get(device_id)
        if session is not None:
            session.close(
                reconnect=reason,
                disconnect_reason="UNKNOWN",
                detail=pb.Reconnect.Reason.Name(reason).lower().replace("_", " "),
            )

    # --- background loops --------------------------------------------------------------------

    async def _watchdog(self) -> None:
        period = max(0.2, min(1.0, self.heartbeat_seconds / 2))
        while True:
            await asyncio.sleep(period)
            limit = time.monotonic() - self.offline_after
            for session in list(self.sessions.values()):
                if session.last_frame < limit and not session.closed:
                    log.info("device.heartbeat_timeout", device_id=session.device_id)
                    session.close(
                        disconnect_reason="CONNECTION_LOST", detail="no heartbeat in time"
                    )

    async def _flush_heartbeats_forever(self) -> None:
        period = max(0.2, min(1.0, self.heartbeat_seconds / 2))
        while True:
            await asyncio.sleep(period)
            try:
                await self._flush_heartbeats()
            except Exception as exc:
                logs.failure(log, "hub.heartbeat_flush_failed", exc)

    async def _flush_heartbeats(self) -> None:
        beats, self._beats = list(self._beats.values()), {}
        if not beats:
            return
        db = self.state.db
        configs = await self.state.link_call(
            commit_each,
            beats,
            lambda batch: _per_beat(batch, record_heartbeats(db, list(batch))),
            lambda beat: record_heartbeats(db, [beat])[beat.device_id],
            name="heartbeats",
        )
        failed = [c for c in configs if isinstance(c, BaseException)]
        if failed:  # not stored: each phone's next beat is, one flush later
            logs.failure(log, "hub.heartbeat_flush_failed", failed[0], beats=len(failed))
        for beat, config in zip(beats, configs, strict=True):
            session = self.sessions.get(beat.device_id)
            if session is None or session.connection_id != beat.connection_id:
                continue
            if isinstance(config, BaseException):
                continue
            if config is None:  # the device connected again elsewhere
                session.close(reconnect=pb.Reconnect.REPLACED, disconnect_reason="")
            else:
                self.apply_config(beat.device_id, config)


def _per_beat(
    beats: Sequence[Beat], configs: dict[str, DeviceConfig | None]
) -> list[DeviceConfig | None]:
    """`record_heartbeats`' answer in the beats' order."""
    return [configs[beat.device_id] for beat in beats]


def _one(outcomes: list[ConnectedDevice | ApiError]) -> ConnectedDevice:
    """A connect recorded alone: its device, or its ApiError raised."""
    (outcome,) = outcomes
    if isinstance(outcome, ApiError):
        raise outcome
    return outcome


def _capabilities(hello: pb.DeviceHello) -> dict[str, Any]:
    """The hello's DeviceCapabilities as stored; {} when it has none (an older agent)."""
    if not hello.HasField("capabilities"):
        return {}
    caps = hello.capabilities
    return {
        "backend": caps.backend[:50],
        "delivery_reports": caps.delivery_reports,
        "inbound_sms": caps.inbound_sms,
    }


def _network_name(value: int) -> str | None:
    """A NetworkRegistration as stored: its name, None when unspecified or unknown to us."""
    if value == common_pb2.NETWORK_REGISTRATION_UNSPECIFIED:
        return None
    try:
        return common_pb2.NetworkRegistration.Name(common_pb2.NetworkRegistration.ValueType(value))
    except ValueError:  # a newer phone's value: stored as unknown
        return None
