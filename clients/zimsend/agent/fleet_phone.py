"""One simulated phone of a fleet, on asyncio and grpc.aio.

Why asyncio here when the agent is trio: a fleet holds thousands of streams in one process, and
the agent's design (grpcio's sync API, two threads per stream) would need thousands of threads.
grpcio's async API is asyncio-only and is the only fast path for that many streams (DESIGN.md,
Concurrency). "One process, one model": the fleet program is asyncio throughout and never runs
trio; it shares only the framework-free modules with the agent — the journal (the same
exactly-once rules, on a shared in-memory database), the simulation model, segments, backoff,
refusal parsing and the keepalive options.

What each ServerFrame means is decided by zimsend.agent.protocol's sans-I/O PhoneProtocol,
the class the trio agent's session drives too: this module writes the frames it returns and
does the rest (queue, re-report, drop, settings, end the stream); its ReportBook replays every
unacknowledged report on each new stream. Reconnect and refusals as in zimsend.agent.supervisor.

Cancellation: cancelling `run()` cancels the stream and the phone's tasks; in-flight simulated
sends are abandoned (there is no SIM to protect, and the journal is in memory anyway).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import cast

import grpc

from zimsend.agent.backoff import Backoff
from zimsend.agent.channel import KEEPALIVE_OPTIONS
from zimsend.agent.journal import Journal
from zimsend.agent.protocol import EndStream, PhoneProtocol, ProtocolError, Received, ReportBook
from zimsend.agent.refusal import refusal_of, retry_delay
from zimsend.agent.senders.base import SendRequest
from zimsend.agent.simulation import Simulation
from zimsend.segments import plan
from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import device_link_pb2_grpc as pb_grpc

__all__ = ["FleetPhone", "FleetStats"]

log = logging.getLogger("zimsend.fleet")

_PROBE_S = 0.25
#: The SIM slots a fleet phone has (its DeviceHello names the same one).
_SIM_SLOTS = (0,)
#: Initial metadata a ZimSend server sends once it has admitted and authenticated a stream
#: (services/device_link.py): the phone says hello only then, so a refusal never races it.
ADMITTED_HEADER = "zimsend-admitted"
#: How long to wait for that header from a server known to send it.
_ADMISSION_WAIT_S = 10.0


@dataclass
class FleetStats:
    """Counters shared by every phone of a fleet (one event loop: no locking needed)."""

    phones: int = 0
    connected: int = 0
    refused: int = 0
    stopped: int = 0
    reconnects: int = 0
    #: Connects a busy server turned away with a retry delay (counted in `reconnects` too).
    busy: int = 0
    #: Why streams ended or never started, by gRPC status name (or `welcome_timeout`,
    #: `closed`): what a reconnect storm is made of.
    lost: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    sends: int = 0
    failures: int = 0
    reports_sent: int = 0
    reports_acked: int = 0
    inbound: int = 0
    #: When a list: (message id, wall-clock time) of every SendCommand as it arrives — the
    #: phone-side timestamp `zimsend bench` needs for accept -> command-on-phone latency.
    command_log: list[tuple[str, float]] | None = None


@dataclass
class FleetPhone:
    """A simulated phone: its credentials, journal, simulation and live settings."""

    device_id: str
    client_id: str
    password: str = field(repr=False)
    journal: Journal = field(repr=False)
    simulation: Simulation = field(repr=False)
    stats: FleetStats = field(default_factory=FleetStats, repr=False)
    server: str = "127.0.0.1:50051"
    credentials: grpc.ChannelCredentials | None = field(default=None, repr=False)
    backoff: Backoff = field(default_factory=Backoff, repr=False)
    settings: pb.DeviceSettings | None = None
    _book: ReportBook = field(default_factory=ReportBook, repr=False)
    _welcomed_at: float | None = None
    _probe: float = _PROBE_S
    _server_admits: bool = False  # this server announces admission (ADMITTED_HEADER)
    _heap: list[tuple[int, int, str]] = field(default_factory=list, repr=False)
    _queued: dict[str, pb.SendCommand] = field(default_factory=dict, repr=False)
    _seq: itertools.count[int] = field(default_factory=itertools.count, repr=False)
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _reports_changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _settings_changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    _last_send: float | None = None

    async def run(self) -> None:
        """Connect, serve, reconnect; return when refused or told to stop."""
        self.journal.recover()
        self._book = ReportBook(self.journal.unacked_reports())
        for command in self.journal.queued():
            self._enqueue(command)
        executor = asyncio.create_task(self._executor())
        try:
            await self._supervise()
        finally:
            executor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await executor

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._welcomed_at = None
            minimum = 0.0
            asked: float | None = None
            channel = (
                grpc.aio.secure_channel(self.server, self.credentials, KEEPALIVE_OPTIONS)
                if self.credentials
                else grpc.aio.insecure_channel(self.server, KEEPALIVE_OPTIONS)
            )
            outgoing: asyncio.Queue[pb.DeviceFrame | None] = asyncio.Queue()
            call = pb_grpc.DeviceLinkServiceStub(channel).Connect(
                _requests(outgoing),
                metadata=(
                    ("x-client-id", self.client_id),
                    ("x-device-id", self.device_id),
                    ("x-device-password", self.password),
                ),
            )
            try:
                await self._session(_Stream(call, outgoing))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.INTERNAL and self._welcomed_at is None:
                    self._probe = min(self._probe * 4, 5.0)  # maybe a refusal we raced
                if (refusal := refusal_of(exc)) is not None:
                    self.stats.refused += 1
                    log.error("%s %s", self.device_id, refusal)
                    return
                if (asked := retry_delay(exc)) is not None:
                    self.stats.busy += 1
                self._lost(exc.code().name)
            except _Reconnect as exc:
                if exc.end.fatal is not None:
                    self.stats.stopped += 1
                    log.error("%s stopped by the server: %s", self.device_id, exc.end.reason_name)
                    return
                minimum = exc.end.retry_after_ms / 1000
                self.backoff.reset()  # the server asked: this link was healthy
            except ProtocolError:
                self._lost("protocol_error")
            except TimeoutError:
                self._lost("welcome_timeout")
            except _LinkClosed:
                self._lost("closed")
            finally:
                outgoing.put_nowait(None)
                call.cancel()
                await channel.close()
            if (up := self._up_for(loop.time())) is not None and up >= 10:
                self.backoff.reset()
            self.stats.reconnects += 1
            await asyncio.sleep(
                self.backoff.honour(asked) if asked is not None else minimum + self.backoff.next()
            )

    def _lost(self, why: str) -> None:
        log.info("%s link lost: %s", self.device_id, why)
        self.stats.lost[why] = self.stats.lost.get(why, 0) + 1

    def _up_for(self, now: float) -> float | None:
        """Seconds since the server's Welcome on this stream; None before it."""
        return None if self._welcomed_at is None else now - self._welcomed_at

    async def _session(self, stream: _Stream) -> None:
        # grpc.aio quirk: if our first write races the server's immediate refusal, grpc marks
        # the call INTERNAL ("Internal error from Core") and the real status (UNAUTHENTICATED,
        # or a busy server's UNAVAILABLE and its retry delay) is lost. So hello waits until the
        # server announces admission (ADMITTED_HEADER) or ends the call. A server not known to
        # announce gets `_probe` seconds to refuse; an ambiguous INTERNAL before Welcome makes
        # the next probe longer (see _supervise).
        first_read = asyncio.ensure_future(stream.read())
        admitted = asyncio.ensure_future(stream.admitted())
        await asyncio.wait(
            [first_read, admitted],
            return_when=asyncio.FIRST_COMPLETED,
            timeout=_ADMISSION_WAIT_S if self._server_admits else self._probe,
        )
        if admitted.done() and admitted.result():
            self._server_admits = True
        elif not first_read.done():
            await asyncio.wait([first_read], timeout=self._probe)
        admitted.cancel()
        protocol = PhoneProtocol(self.journal, self._book, sim_slots=lambda: _SIM_SLOTS)
        stream.write(
            protocol.hello(
                pb.DeviceHello(
                    model="ZimSend Fleet Simulator",
                    android_version="fleet",
                    app_version="fleet",
                    sims=[common_pb2.SimSlot(slot=slot, carrier="SimNet") for slot in _SIM_SLOTS],
                )
            )
        )
        first = await asyncio.wait_for(first_read, 30)
        self._probe = _PROBE_S
        if first is None:
            raise _LinkClosed()
        self._do(stream, protocol.receive(first))  # ProtocolError unless it is the Welcome
        self._welcomed_at = asyncio.get_running_loop().time()
        self.stats.connected += 1
        tasks = [
            asyncio.create_task(self._pump_reports(stream)),
            asyncio.create_task(self._heartbeats(stream, protocol)),
        ]
        try:
            await self._read(stream, protocol)
        finally:
            self.stats.connected -= 1
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _read(self, stream: _Stream, protocol: PhoneProtocol) -> None:
        while True:
            frame = await stream.read()
            if frame is None:
                raise _LinkClosed()
            if frame.HasField("send"):
                self.stats.commands += 1
                if self.stats.command_log is not None:
                    self.stats.command_log.append((frame.send.message_id, time.time()))
            self._do(stream, protocol.receive(frame))

    def _do(self, stream: _Stream, received: Received) -> None:
        """Carry out what the protocol decided about one frame: its frames first."""
        for frame in received.frames:
            stream.write(frame)
        if received.settings is not None:
            self._apply(received.settings)
        if (command := received.enqueue) is not None:
            self._enqueue(command)
        if received.reports_added:
            self._reports_changed.set()
        if received.discard:
            self._queued.pop(received.discard, None)
        self.stats.reports_acked += received.acked
        if received.end is not None:
            raise _Reconnect(received.end)

    async def _pump_reports(self, stream: _Stream) -> None:
        self._book.new_stream()
        while True:
            self._reports_changed.clear()
            for frame in self._book.due():
                stream.write(frame)
                self.stats.reports_sent += 1
            await self._reports_changed.wait()

    async def _heartbeats(self, stream: _Stream, protocol: PhoneProtocol) -> None:
        while True:
            stream.write(protocol.heartbeat(self.simulation.health(), len(self._queued)))
            # New settings (maybe a new interval) end the wait, as on the agent.
            self._settings_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(protocol.heartbeat_interval):
                    await self._settings_changed.wait()

    # --- the SIM side ---------------------------------------------------------------------

    def _apply(self, settings: pb.DeviceSettings) -> None:
        self.settings = settings  # the protocol's copy
        self._changed.set()
        self._settings_changed.set()

    def _enqueue(self, command: pb.SendCommand) -> None:
        if command.message_id not in self._queued:
            rank = command.priority if 1 <= command.priority <= 5 else 3
            heapq.heappush(self._heap, (rank, next(self._seq), command.message_id))
            self._queued[command.message_id] = command
            self._changed.set()

    def _add_reports(self, frames: list[pb.DeviceFrame]) -> None:
        if self._book.add(frames):
            self._reports_changed.set()

    async def _executor(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            s = self.settings
            wait: float | None = None
            if s is None or not s.enabled or not self._queued:
                wait = 3600.0
            elif s.daily_cap > 0 and self.journal.sends_since(_midnight()) >= s.daily_cap:
                wait = 60.0
            elif self._last_send is not None:
                remaining = self._last_send + s.send_interval_ms / 1000 - loop.time()
                wait = remaining if remaining > 0 else None
            if wait is not None:
                self._changed.clear()
                with contextlib.suppress(TimeoutError):  # asyncio.timeout: wait_for of 3.11
                    async with asyncio.timeout(wait):  # can lose a cancellation
                        await self._changed.wait()
                continue
            _, _, message_id = heapq.heappop(self._heap)
            if (command := self._queued.pop(message_id, None)) is None:
                continue
            if not self.journal.begin_send(command.message_id):
                continue
            self._last_send = loop.time()
            request = SendRequest(
                command.message_id, command.to, command.body, tuple(plan(command.body).parts)
            )
            decision = self.simulation.decide(command.message_id)
            await asyncio.sleep(decision.delay)
            result = self.simulation.complete(request, decision)
            self._add_reports(self.journal.finish_send(command.message_id, result))
            if result.ok:
                self.stats.sends += 1
                if decision.delivery_delay is not None:
                    loop.call_later(decision.delivery_delay, self._delivered, request)
            else:
                self.stats.failures += 1

    def _delivered(self, request: SendRequest) -> None:
        for report in self.simulation.delivery_reports(request):
            self._add_reports(self.journal.record_delivery(report))

    def inject_inbound(self) -> None:
        """Make this phone "receive" a simulated SMS."""
        self.stats.inbound += 1
        frame = self.journal.add_inbound(self.simulation.next_inbound())
        self._add_reports([frame] if frame is not None else [])


class _LinkClosed(Exception):
    pass


class _Reconnect(Exception):
    def __init__(self, end: EndStream) -> None:
        super().__init__(end.reason_name)
        self.end = end


class _Stream:
    """Writes go through a queue that grpc.aio consumes as the request iterator: frames from
    several tasks never race on `call.write`, and a write failing because the server already
    refused the call is absorbed, so `read()` raises the call's real status (a direct write
    would fail first with a generic INTERNAL "Internal error from Core")."""

    def __init__(
        self,
        call: grpc.aio.StreamStreamCall[pb.DeviceFrame, pb.ServerFrame],
        outgoing: asyncio.Queue[pb.DeviceFrame | None],
    ) -> None:
        self._call = call
        self._outgoing = outgoing

    def write(self, frame: pb.DeviceFrame) -> None:
        self._outgoing.put_nowait(frame)

    async def admitted(self) -> bool:
        """Whether the server announced admission (False when the call ended without)."""
        try:
            metadata = await self._call.initial_metadata()
        except grpc.RpcError:  # the call failed: read() raises its status
            return False
        return any(key == ADMITTED_HEADER for key, _ in metadata or ())

    async def read(self) -> pb.ServerFrame | None:
        """The next frame, or None when the server ended the stream cleanly."""
        frame = await self._call.read()
        return None if frame is grpc.aio.EOF else cast(pb.ServerFrame, frame)


async def _requests(
    outgoing: asyncio.Queue[pb.DeviceFrame | None],
) -> AsyncIterator[pb.DeviceFrame]:
    while (frame := await outgoing.get()) is not None:
        yield frame


def _midnight() -> float:
    """Start of the current UTC day (the day the server's dispatcher counts for daily_cap)."""
    return datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
