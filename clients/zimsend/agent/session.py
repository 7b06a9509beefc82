"""One connected stream: hello, welcome, then reading, reporting and heartbeats side by side.

What each frame means is decided by the sans-I/O `protocol.PhoneProtocol` (the asyncio fleet
drives the same class); this module is its trio driver: it writes the frames the protocol
returns (the CommandAck first), then hands an admitted command to the executor, wakes the
report pump for re-reports, drops a cancelled command, applies new settings live, and ends the
session with `ReconnectRequested` on Reconnect (the supervisor decides what next).

The heartbeat task sends the protocol's Heartbeat at the settings' interval, and at once when
the settings or what the phone can do change (the server stops or resumes giving it messages).

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
from zimsend.agent.journal import Journal
from zimsend.agent.link import Link
from zimsend.agent.protocol import PhoneProtocol, ProtocolError, Received
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import Sender
from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["ProtocolError", "ReconnectRequested", "Session"]

log = logging.getLogger("zimsend.agent")

WELCOME_TIMEOUT_S = 30.0


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
        protocol = PhoneProtocol(self.journal, self.reporter.book, sim_slots=self._sim_slots)
        await self.link.send(protocol.hello(self._hello()))
        with trio.fail_after(WELCOME_TIMEOUT_S):
            first = await self.link.receive()
        await self._do(protocol.receive(first))  # ProtocolError unless it is the Welcome
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.reporter.pump, self.link)
            nursery.start_soon(self._heartbeats, protocol)
            while True:
                await self._do(protocol.receive(await self.link.receive()))

    def _sim_slots(self) -> set[int]:
        return {s.slot for s in self.sender.describe().sims}

    def _hello(self) -> pb.DeviceHello:
        info = self.sender.describe()
        caps = info.capabilities
        return pb.DeviceHello(
            capabilities=None
            if caps is None
            else common_pb2.DeviceCapabilities(
                backend=caps.backend,
                delivery_reports=caps.delivery_reports,
                inbound_sms=caps.inbound_sms,
            ),
            model=info.model,
            android_version=info.android_version,
            app_version=self.app_version,
            phone_number=info.phone_number,
            sims=[
                common_pb2.SimSlot(slot=s.slot, carrier=s.carrier, phone_number=s.phone_number)
                for s in info.sims
            ],
        )

    async def _heartbeats(self, protocol: PhoneProtocol) -> None:
        while True:
            health = await self.health.refresh()
            await self.link.send(protocol.heartbeat(health, self.executor.depth))
            # New settings (maybe a new interval) or a change of what the phone can do end the
            # wait: heartbeat now (the server stops or resumes giving it messages), then re-read.
            with trio.move_on_after(protocol.heartbeat_interval):
                async with trio.open_nursery() as wait:

                    async def until(event: Callable[[], Awaitable[None]]) -> None:
                        await event()
                        wait.cancel_scope.cancel()

                    wait.start_soon(until, self.executor.settings_changed)
                    wait.start_soon(until, self.health.changed)

    async def _do(self, received: Received) -> None:
        """Carry out what the protocol decided about one frame: its frames first."""
        for frame in received.frames:
            await self.link.send(frame)
            if frame.HasField("ack") and not frame.ack.accepted:
                log.info("command %s refused: %s", frame.ack.command_id, frame.ack.reason)
        if received.settings is not None:
            self.executor.apply_settings(received.settings)
        if received.welcome is not None:
            self.on_welcome(received.welcome)
        if (command := received.enqueue) is not None:
            self.executor.enqueue(command)
        if (offer := received.command) is not None and received.verdict is not None:
            log.info(
                "command %s for %s: %s%s",
                offer.command_id,
                offer.message_id,
                received.verdict.value,
                " (redelivery)" if offer.redelivery else "",
            )
        if received.reports_added:
            self.reporter.wake()
        if received.discard:
            self.executor.discard(received.discard)
            log.info("cancel %s: done", received.discard)
        if received.acked:
            log.info("reports acked: %d (%d still unacked)", received.acked, self.reporter.unacked)
        if (end := received.end) is not None:
            raise ReconnectRequested(end.reason, end.retry_after_ms)
