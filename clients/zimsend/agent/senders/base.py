"""The one small interface between the agent and whatever actually sends SMS.

Like httpx's transports: the agent (protocol, journal, pacing, reconnects) knows nothing about
SIMs; a sender knows nothing about the server. A sender

- describes the phone (`describe()`: model, OS, number, SIM slots) for DeviceHello,
- reports health (`health()`: battery, charging, signal) for Heartbeats,
- hands one message's parts to the SIM (`send()`), returning once the network took them or
  refused them — per part, since a multipart SMS can fail half-way,
- runs in the background (`run(recorder)`) recording what happens later: handset delivery
  reports and inbound SMS. The `Recorder` is the agent's journal as a sender sees it: what it
  records is durable when the call returns, so a backend deletes an SMS from a modem only
  after `recorder.inbound()` returned, and after a restart it asks `awaiting_delivery()` which
  parts still wait for a network report.

The agent guarantees `send()` is called at most once per message attempt (see journal.py) and
calls it inside a shielded scope: a sender must not hang forever, or shutdown hangs with it.
It calls `send()` only while the last `health()` said `can_send` (a modem unplugged, a SIM
locked: the phone is shown unable to send and is given nothing).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, runtime_checkable

from zimsend.v1 import failures_pb2

__all__ = [
    "BEFORE_SEND_CODES",
    "ERROR_CODES",
    "NETWORK_STATES",
    "AwaitingPart",
    "Capabilities",
    "DeliveryReport",
    "DeviceInfo",
    "Health",
    "InboundSms",
    "PartResult",
    "Recorder",
    "SendRequest",
    "SendResult",
    "Sender",
    "SenderEvent",
    "SimInfo",
    "failure",
]


def failure(code: failures_pb2.FailureCode.ValueType) -> str:
    """The name a report carries for a FailureCode (`failures.proto`), e.g. "NO_SERVICE"."""
    return failures_pb2.FailureCode.Name(code)


def _option(name: str) -> failures_pb2.FailureCodeInfo:
    value = failures_pb2.FailureCode.DESCRIPTOR.values_by_name[name]
    info: failures_pb2.FailureCodeInfo = value.GetOptions().Extensions[failures_pb2.failure]
    return info


def _before_send(name: str) -> bool:
    return _option(name).before_send


#: Failure codes a sender may report: every FailureCode but the server's own (EXPIRED,
#: OPTED_OUT: `server_only`). Report a BEFORE_SEND_CODES code only when the SMS certainly did
#: not leave the phone: the server then gives the message to another phone.
ERROR_CODES = tuple(
    name
    for name in failures_pb2.FailureCode.keys()
    if name != "FAILURE_CODE_UNSPECIFIED" and not _option(name).server_only
)
#: The codes that prove the SMS never left the phone (failures.proto's table).
BEFORE_SEND_CODES = tuple(name for name in ERROR_CODES if _before_send(name))


#: Network registration as a sender reports it (the Heartbeat's `network`); "" is unknown.
NETWORK_STATES = ("home", "roaming", "searching", "denied", "not_registered")


@dataclass(frozen=True)
class SimInfo:
    """One SIM slot."""

    slot: int
    carrier: str = ""
    phone_number: str = ""


@dataclass(frozen=True)
class Capabilities:
    """What a backend can report at all (DeviceHello.capabilities): a phone that cannot see
    delivery reports leaves its messages `sent`, never an invented `delivered`."""

    backend: str
    delivery_reports: bool
    inbound_sms: bool


@dataclass(frozen=True)
class DeviceInfo:
    """What DeviceHello says about the phone."""

    model: str
    android_version: str
    phone_number: str = ""
    sims: tuple[SimInfo, ...] = ()
    capabilities: Capabilities | None = None


@dataclass(frozen=True)
class Health:
    """Battery percent, charging, signal bars 0-4 (None: the device does not say), network
    registration (NETWORK_STATES or ""), and whether the phone can send right now; when it
    cannot, `problem` says why in words for the device list, and `failure_code` (a
    BEFORE_SEND_CODES name: NO_SERVICE, SIM_MISSING, SIM_PIN_REQUIRED…) is what the commands
    the phone holds are given back with if it stays so (executor.py); "" lets the agent pick
    from `network` (see `health.give_back_code`)."""

    battery: int | None
    charging: bool | None
    signal: int | None
    network: str = ""
    can_send: bool = True
    problem: str = ""
    failure_code: str = ""


@dataclass(frozen=True)
class SendRequest:
    """One message, already split into the parts the SIM will send (zimsend.segments)."""

    message_id: str
    to: str
    body: str
    parts: tuple[str, ...]
    sim_slot: int | None = None


@dataclass(frozen=True)
class PartResult:
    """Outcome of handing one part to the network: ok, or failed with an ERROR_CODES code.
    `reference` is the network's message reference (TP-MR, 0-255) when the backend knows it:
    the journal keeps it to match the part's delivery report, even after a restart."""

    ok: bool
    error_code: str = ""
    error_message: str = ""
    reference: int | None = None


@dataclass(frozen=True)
class SendResult:
    """Per-part outcomes, in part order, and when the handoff happened."""

    parts: tuple[PartResult, ...]
    at: datetime

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.parts)


@dataclass(frozen=True)
class DeliveryReport:
    """A handset delivery report for one part (arrives later, from `run`).

    A backend that knows the part names it (`message_id`, `part_index`, `part_count`); a modem
    knows only the network's message `reference` and the `recipient`: leave `message_id`
    empty and the journal finds the part (see `Journal.record_delivery`). `submitted_at` (the
    network's time of the original submission, when the report carries it) picks between
    parts that share a reference after the 0-255 counter wrapped."""

    message_id: str = ""
    part_index: int = 0
    part_count: int = 0
    delivered: bool = True
    error_code: str = ""
    error_message: str = ""
    at: datetime | None = None
    reference: int | None = None
    recipient: str = ""
    submitted_at: datetime | None = None


@dataclass(frozen=True)
class InboundSms:
    """An SMS the phone received (multipart already joined).

    `source_id` identifies it at its source (a content hash for a modem, the content
    provider's id on Android): the journal reports one source id once, across restarts."""

    sender: str
    body: str
    sim_slot: int = 0
    received_at: datetime | None = None
    source_id: str = ""


@dataclass(frozen=True)
class AwaitingPart:
    """A part handed to the network whose delivery report has not arrived (journaled)."""

    message_id: str
    part_index: int
    part_count: int
    to: str
    reference: int | None
    sent_at: datetime


SenderEvent = DeliveryReport | InboundSms


class Recorder(Protocol):
    """The agent's journal as a sender sees it. Calls are synchronous and quick (one SQLite
    commit); from a backend's own thread, go through `trio.from_thread.run_sync`."""

    def delivery(self, report: DeliveryReport) -> bool:
        """Journal a delivery report and queue it for the server; False when it matches no
        part awaiting one (unknown, already final)."""
        ...

    def inbound(self, sms: InboundSms) -> bool:
        """Journal an inbound SMS and queue it for the server; durable on return. False when
        its `source_id` was journaled before (a duplicate: not reported again)."""
        ...

    def seen_inbound(self, source_id: str) -> bool:
        """Whether an inbound SMS with this source id was journaled (or marked seen)."""
        ...

    def mark_inbound_seen(self, source_id: str) -> None:
        """Remember a source id without reporting it (a first start's baseline)."""
        ...

    def latest_inbound(self, prefix: str) -> str | None:
        """The most recently journaled source id that starts with `prefix`, if any."""
        ...

    def awaiting_delivery(self) -> list[AwaitingPart]:
        """Parts handed to the network within the delivery window and not yet reported
        delivered or failed, oldest first: what a backend resumes after a restart."""
        ...


@runtime_checkable
class Sender(Protocol):
    """What a backend implements; see the module docstring for the contract."""

    def describe(self) -> DeviceInfo: ...

    async def health(self) -> Health: ...

    async def send(self, request: SendRequest) -> SendResult: ...

    async def run(self, recorder: Recorder) -> None:
        """Run until cancelled, recording delivery reports and inbound SMS."""
        ...
