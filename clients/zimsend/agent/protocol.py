"""The phone's side of DeviceLink, sans-I/O: ServerFrames in, decisions and DeviceFrames out.

Why one class: the trio agent (session.py) and the asyncio fleet (fleet_phone.py) speak the
same protocol on two event loops; every decision about a frame is made here once, and each
driver only does its I/O (the h11 / wsproto shape). `PhoneProtocol.receive` takes one
ServerFrame and returns a `Received`: the frames to write (first, in order: the CommandAck that
says "durably held" goes out before anything done about the command), then what the driver
acts on (a command to queue, reports to send again, a message to drop, new settings, the end of
the stream). It never awaits, sleeps or touches a socket; its only side effects are on the
journal and report book it was given.

Per frame (protos/zimsend/v1/device_link.proto):

- Welcome must come first on a stream (after `hello`), else `ProtocolError`; it and
  DeviceSettings carry the current settings;
- SendCommand for a SIM slot the phone lacks → CommandAck refused, SIM_MISSING (nothing was
  sent: the server may give it to another phone); else the journal admits it (journaled
  `queued` before the ack) → CommandAck accepted, then queue it (NEW), re-report its journaled
  outcome (REREPORT: never sent twice) or nothing (HELD);
- CancelCommand → the journal cancels it if not yet handed to the SIM → CommandAck (accepted =
  cancelled in time; else why: unknown, or too late and the message's state);
- Ping → Pong; ReportAck → the reports are forgotten (journal, then the report book);
- Reconnect → `EndStream` with its reason and delay; `fatal` says why the phone must stop
  instead (refusal.FATAL_RECONNECT).

`ReportBook` is the reports' side: every unacknowledged report, and which of them the current
stream already sent, so a new stream replays them all and a re-report goes out once more.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from zimsend.agent.journal import Admission, Verdict
from zimsend.agent.refusal import FATAL_RECONNECT, reconnect_reason
from zimsend.agent.senders.base import Health, failure
from zimsend.v1 import common_pb2, failures_pb2
from zimsend.v1 import device_link_pb2 as pb

__all__ = [
    "DEFAULT_HEARTBEAT_S",
    "CommandJournal",
    "EndStream",
    "PhoneProtocol",
    "ProtocolError",
    "Received",
    "ReportBook",
    "report_id",
]

#: Heartbeat period until the server's settings name one.
DEFAULT_HEARTBEAT_S = 30
_SIM_MISSING = failure(failures_pb2.SIM_MISSING)


class ProtocolError(Exception):
    """The server broke the frame order (e.g. no Welcome after DeviceHello)."""


class CommandJournal(Protocol):
    """What the protocol needs of a journal (`journal.Journal` is one, durable for the agent
    and on a shared in-memory database for the fleet)."""

    def admit(self, command: pb.SendCommand) -> Admission: ...

    def cancel(self, message_id: str) -> bool: ...

    def state(self, message_id: str) -> str | None: ...

    def ack_reports(self, report_ids: Iterable[str]) -> int: ...

    def pending_message_ids(self) -> list[str]: ...


@dataclass(frozen=True, slots=True)
class EndStream:
    """The server sent Reconnect: end this stream; reconnect after `retry_after_ms` unless
    `fatal` (what to tell the user) says reconnecting cannot help."""

    reason: pb.Reconnect.Reason.ValueType
    retry_after_ms: int
    fatal: str | None

    @property
    def reason_name(self) -> str:
        """The reason's enum name (e.g. REPLACED), or "" when the server gave none."""
        return pb.Reconnect.Reason.Name(self.reason) if self.reason else ""


@dataclass(slots=True)
class Received:
    """What one ServerFrame asks of the driver: write `frames` first, then act on the rest."""

    frames: list[pb.DeviceFrame] = field(default_factory=list)
    #: A SendCommand the journal admitted, and its verdict (NEW: see `enqueue`).
    command: pb.SendCommand | None = None
    verdict: Verdict | None = None
    #: Reports added to the report book again (REREPORT): wake the report writer.
    reports_added: bool = False
    #: A message cancelled in time: drop it from the executor's queue.
    discard: str = ""
    #: The settings of a Welcome or DeviceSettings (a copy): apply them.
    settings: pb.DeviceSettings | None = None
    #: The Welcome that opened the stream.
    welcome: pb.Welcome | None = None
    #: How many acknowledged reports the journal still held (ReportAck).
    acked: int = 0
    end: EndStream | None = None

    @property
    def enqueue(self) -> pb.SendCommand | None:
        """A command admitted as new: hand it to the executor."""
        return self.command if self.verdict is Verdict.NEW else None


def report_id(frame: pb.DeviceFrame) -> str:
    """The phone-chosen id of a status or inbound report."""
    return frame.report.report_id if frame.HasField("report") else frame.inbound.report_id


class ReportBook:
    """Unacknowledged reports in journal order, and what the current stream sent of them.

    A report added again (a re-report after its ack) gets a new generation, so a stream that
    already sent it sends it once more. An ack forgets a report from both sides, so the
    per-stream record holds only what is in flight (it once grew by every report ever sent)."""

    def __init__(self, unacked: Iterable[tuple[str, pb.DeviceFrame]] = ()) -> None:
        self._pending: dict[str, tuple[pb.DeviceFrame, int]] = {
            rid: (frame, 0) for rid, frame in unacked
        }
        self._generation = 0
        self._sent: dict[str, int] = {}

    @property
    def unacked(self) -> int:
        """How many reports wait for a ReportAck."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """How many reports the current stream sent and the server has not acknowledged."""
        return len(self._sent)

    def add(self, frames: Iterable[pb.DeviceFrame]) -> bool:
        """Hold already-journaled reports for sending; True when there was any (wake the
        writer)."""
        self._generation += 1
        added = False
        for frame in frames:
            self._pending[report_id(frame)] = (frame, self._generation)
            added = True
        return added

    def forget(self, report_ids: Iterable[str]) -> None:
        """The server stored these reports."""
        for rid in report_ids:
            self._pending.pop(rid, None)
            self._sent.pop(rid, None)

    def new_stream(self) -> None:
        """A new stream starts: it has sent nothing yet, so everything pending is due."""
        self._sent = {}

    def due(self) -> Iterator[pb.DeviceFrame]:
        """Each pending report this stream has not sent (at its generation), oldest first;
        a report counts as sent when the caller asks for the next one (it wrote it), unless it
        was acknowledged meanwhile."""
        sent = self._sent
        for rid, (frame, generation) in list(self._pending.items()):
            if sent.get(rid) != generation and rid in self._pending:
                yield frame
                if rid in self._pending:
                    sent[rid] = generation


class PhoneProtocol:
    """A phone's protocol state: the welcome gate, the current settings, and the decisions of
    `receive`. `hello` starts a stream (both drivers make one per stream; the settings that
    outlive it live in their executors). `sim_slots` says which SIM slots the phone has now
    (empty: it cannot tell, so every slot is tried)."""

    def __init__(
        self,
        journal: CommandJournal,
        reports: ReportBook,
        *,
        sim_slots: Callable[[], Collection[int]] = tuple,
    ) -> None:
        self._journal = journal
        self._reports = reports
        self._sim_slots = sim_slots
        self.settings: pb.DeviceSettings | None = None
        self.welcomed = False

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between heartbeats: the settings' interval, else DEFAULT_HEARTBEAT_S."""
        interval = self.settings.heartbeat_interval_seconds if self.settings else 0
        return interval if interval > 0 else DEFAULT_HEARTBEAT_S

    def hello(self, hello: pb.DeviceHello) -> pb.DeviceFrame:
        """Start a stream: the DeviceHello frame to write first, with the message ids the
        journal still holds. A Welcome is expected next."""
        self.welcomed = False
        hello.pending_message_ids[:] = self._journal.pending_message_ids()
        return pb.DeviceFrame(hello=hello)

    def heartbeat(self, health: Health, queue_depth: int) -> pb.DeviceFrame:
        """The Heartbeat frame for this health and this many commands waiting."""
        return pb.DeviceFrame(
            heartbeat=pb.Heartbeat(
                battery=health.battery,
                charging=bool(health.charging),
                signal=health.signal,
                queue_depth=queue_depth,
                network=_network(health.network),
                cannot_send_reason=""
                if health.can_send
                else (health.problem or "the phone cannot send"),
            )
        )

    def receive(self, frame: pb.ServerFrame) -> Received:
        """Decide what one ServerFrame means; ProtocolError when it breaks the frame order."""
        kind = frame.WhichOneof("frame")
        if not self.welcomed:
            if kind != "welcome":
                raise ProtocolError(f"expected Welcome first, got {kind}")
            self.welcomed = True
            return Received(settings=self._apply(frame.welcome.settings), welcome=frame.welcome)
        if kind == "send":
            return self._on_send(frame.send)
        if kind == "cancel":
            return self._on_cancel(frame.cancel)
        if kind == "settings":
            return Received(settings=self._apply(frame.settings))
        if kind == "welcome":
            return Received(settings=self._apply(frame.welcome.settings))
        if kind == "ping":
            return Received([pb.DeviceFrame(pong=pb.Pong(nonce=frame.ping.nonce))])
        if kind == "report_ack":
            ids = list(frame.report_ack.report_ids)
            count = self._journal.ack_reports(ids)
            self._reports.forget(ids)
            return Received(acked=count)
        if kind == "reconnect":
            reason = reconnect_reason(frame.reconnect)
            return Received(
                end=EndStream(
                    reason, max(0, frame.reconnect.retry_after_ms), FATAL_RECONNECT.get(reason)
                )
            )
        return Received()  # a kind from a newer server: ignored

    def _on_send(self, command: pb.SendCommand) -> Received:
        if command.HasField("sim_slot"):
            slots = self._sim_slots()
            if slots and command.sim_slot not in slots:
                return Received(
                    [
                        _ack(
                            command.command_id,
                            False,
                            f"no SIM in slot {command.sim_slot}",
                            _SIM_MISSING,
                        )
                    ]
                )
        admission = self._journal.admit(command)  # durable before the ack
        received = Received(
            [_ack(command.command_id, True)], command=command, verdict=admission.verdict
        )
        if admission.verdict is Verdict.REREPORT:
            received.reports_added = self._reports.add(admission.reports)
        return received

    def _on_cancel(self, cancel: pb.CancelCommand) -> Received:
        if self._journal.cancel(cancel.message_id):
            return Received([_ack(cancel.command_id, True)], discard=cancel.message_id)
        state = self._journal.state(cancel.message_id)
        reason = "unknown message" if state is None else f"too late: message is {state}"
        return Received([_ack(cancel.command_id, False, reason)])

    def _apply(self, settings: pb.DeviceSettings) -> pb.DeviceSettings:
        new = pb.DeviceSettings()
        new.CopyFrom(settings)
        self.settings = new
        return new


def _ack(
    command_id: str,
    accepted: bool,
    reason: str = "",
    error_code: str = "",
) -> pb.DeviceFrame:
    return pb.DeviceFrame(
        ack=pb.CommandAck(
            command_id=command_id, accepted=accepted, reason=reason, error_code=error_code
        )
    )


def _network(state: str) -> common_pb2.NetworkRegistration.ValueType:
    names = common_pb2.NetworkRegistration.keys()
    return common_pb2.NetworkRegistration.Value(state if state in names[1:] else names[0])
