"""One connected stream: hello, welcome, then reading, reporting and heartbeats side by side.

Frame order on a stream (protos/zimsend/v1/device_link.proto): the phone sends DeviceHello
first (with the message ids it still holds), the server answers Welcome (settings), then:

- SendCommand → journal admission (journaled `queued` first), then CommandAck; a command for a
  message already handed to the SIM is acknowledged and its journaled outcome re-reported,
  never sent again;
- CancelCommand → CommandAck(accepted = cancelled in time);
- DeviceSettings → applied live; Ping → Pong; ReportAck → the reports are forgotten;
- Reconnect → the session ends with `ReconnectRequested` (the supervisor decides what next).

Cancellation: everything here belongs to one stream; cancelling the session loses nothing,
because commands and reports live in the journal and the executor outlives streams.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from zimsend.agent.executor import Executor
from zimsend.agent.health import HealthWatch
from zimsend.agent.journal import Journal, Verdict
from zimsend.agent.link import Link
from zimsend.agent.refusal import reconnect_reason
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import Sender, failure
from zimsend.v1 import common_pb2, failures_pb2
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["ProtocolError", "ReconnectRequested", "Session"]

log = logging.getLogger("zimsend.agent")

DEFAULT_HEARTBEAT_S = 30
WELCOME_TIMEOUT_S = 30.0


class ProtocolError(Exception):
    """The server broke the frame order (e.g. no Welcome after DeviceHello)."""


class ReconnectRequested(Exception):
    """The server sent Reconnect."""

    def __init__(self, reason: pb.Reconnect.Reason.ValueType, retry_after_ms: int) -> None:
        super().__init__(f"server asked to reconnect: {pb.Reconnect.Reason.Name(reason)}")
        self.reason = reason
        self.retry_after_ms = retry_after_ms


@dataclass
class Session:
    """The per-stream tasks of one device."""

    link: Link
    journal: Journal
    executor: Executor
    reporter: Reporter
    sender: Sender
    health: HealthWatch
    app_version: str
    on_welcome: Callable[[pb.Welcome], None] = lambda welcome: None

    async def run(self) -> None:
        """Run until the stream ends; always ends by raising (LinkClosed, ReconnectRequested,
        ProtocolError, or the call's grpc.RpcError)."""
        await self.link.send(pb.DeviceFrame(hello=self._hello()))
        with trio.fail_after(WELCOME_TIMEOUT_S):
            first = await self.link.receive()
        if first.WhichOneof("frame") != "welcome":
            raise ProtocolError(f"expected Welcome first, got {first.WhichOneof('frame')}")
        self.executor.apply_settings(first.welcome.settings)
        self.on_welcome(first.welcome)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.reporter.pump, self.link)
            nursery.start_soon(self._heartbeats)
            await self._read()

    def _hello(self) -> pb.DeviceHello:
        info = self.sender.describe()
        caps = info.capabilities
        return pb.DeviceHello(
            capabilities=None if caps is None else common_pb2.DeviceCapabilities(
                backend=caps.backend, delivery_reports=caps.delivery_reports,
                inbound_sms=caps.inbound_sms),
            model=info.model,
            android_version=info.android_version,
            app_version=self.app_version,
            phone_number=info.phone_number,
            sims=[
                common_pb2.SimSlot(slot=s.slot, carrier=s.carrier, phone_number=s.phone_number)
                for s in info.sims
            ],
            pending_message_ids=self.journal.pending_message_ids(),
        )

    async def _heartbeats(self) -> None:
        while True:
            health = await self.health.refresh()
            await self.link.send(pb.DeviceFrame(heartbeat=pb.Heartbeat(
                battery=health.battery, charging=bool(health.charging), signal=health.signal,
                queue_depth=self.executor.depth, network=_network(health.network),
                cannot_send_reason="" if health.can_send else (
                    health.problem or "the phone cannot send"),
            )))
            settings = self.executor.settings
            interval = settings.heartbeat_interval_seconds if settings else 0
            # New settings (maybe a new interval) or a change of what the phone can do end the
            # wait: heartbeat now (the server stops or resumes giving it messages), then re-read.
            with trio.move_on_after(interval if interval > 0 else DEFAULT_HEARTBEAT_S):
                async with trio.open_nursery() as wait:
                    async def until(event: Callable[[], Awaitable[None]]) -> None:
                        await event()
                        wait.cancel_scope.cancel()
                    wait.start_soon(until, self.executor.settings_changed)
                    wait.start_soon(until, self.health.changed)

    async def _read(self) -> None:
        while True:
            frame = await self.link.receive()
            kind = frame.WhichOneof("frame")
            if kind == "send":
                await self._on_send(frame.send)
            elif kind == "cancel":
                await self._on_cancel(frame.cancel)
            elif kind in ("settings", "welcome"):
                s = frame.settings if kind == "settings" else frame.welcome.settings
                self.executor.apply_settings(s)
            elif kind == "ping":
                await self.link.send(pb.DeviceFrame(pong=pb.Pong(nonce=frame.ping.nonce)))
            elif kind == "report_ack":
                count = self.reporter.acked(list(frame.report_ack.report_ids))
                log.info("reports acked: %d (%d still unacked)", count, self.reporter.unacked)
            elif kind == "reconnect":
                raise ReconnectRequested(reconnect_reason(frame.reconnect),
                                         frame.reconnect.retry_after_ms)
            # Unknown kinds come from a newer server: ignore them.

    async def _on_send(self, command: pb.SendCommand) -> None:
        slots = {s.slot for s in self.sender.describe().sims}
        if command.HasField("sim_slot") and slots and command.sim_slot not in slots:
            log.info("command %s refused: no SIM in slot %d", command.message_id, command.sim_slot)
            # Nothing was sent: SIM_MISSING lets the server give it to another phone.
            await self._ack(command.command_id, False, f"no SIM in slot {command.sim_slot}",
                            failure(failures_pb2.SIM_MISSING))
            return
        admission = self.journal.admit(command)  # durable before the ack
        await self._ack(command.command_id, True)
        log.info("command %s for %s: %s%s", command.command_id, command.message_id,
                 admission.verdict.value, " (redelivery)" if command.redelivery else "")
        if admission.verdict is Verdict.NEW:
            self.executor.enqueue(command)
        elif admission.verdict is Verdict.REREPORT:
            self.reporter.add(admission.reports)

    async def _on_cancel(self, cancel: pb.CancelCommand) -> None:
        cancelled = self.journal.cancel(cancel.message_id)
        if cancelled:
            self.executor.discard(cancel.message_id)
        state = self.journal.state(cancel.message_id)
        reason = "" if cancelled else (
            "unknown message" if state is None else f"too late: message is {state}")
        log.info("cancel %s: %s", cancel.message_id, "done" if cancelled else reason)
        await self._ack(cancel.command_id, cancelled, reason)

    async def _ack(
        self, command_id: str, accepted: bool, reason: str = "", error_code: str = ""
    ) -> None:
        await self.link.send(
            pb.DeviceFrame(ack=pb.CommandAck(command_id=command_id, accepted=accepted,
                                             reason=reason, error_code=error_code))
        )


def _network(state: str) -> common_pb2.NetworkRegistration.ValueType:
    names = common_pb2.NetworkRegistration.keys()
    return common_pb2.NetworkRegistration.Value(state if state in names[1:] else names[0])
