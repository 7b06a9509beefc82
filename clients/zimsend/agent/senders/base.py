"""The one small interface between the agent and whatever actually sends SMS.

Like httpx's transports: the agent (protocol, journal, pacing, reconnects) knows nothing about
SIMs; a sender knows nothing about the server. A sender

- describes the phone (`describe()`: model, OS, number, SIM slots) for DeviceHello,
- reports health (`health()`: battery, charging, signal) for Heartbeats,
- hands one message's parts to the SIM (`send()`), returning once the network took them or
  refused them — per part, since a multipart SMS can fail half-way,
- runs in the background (`run(events)`) pushing what happens later: handset delivery reports
  and inbound SMS.

The agent guarantees `send()` is called at most once per message attempt (see journal.py) and
calls it inside a shielded scope: a sender must not hang forever, or shutdown hangs with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import trio

__all__ = [
    "ERROR_CODES",
    "DeliveryReport",
    "DeviceInfo",
    "Health",
    "InboundSms",
    "PartResult",
    "SendRequest",
    "SendResult",
    "Sender",
    "SenderEvent",
    "SimInfo",
]

#: Failure codes a sender may report (SPEC.md §7 `sms.failed`, minus EXPIRED which is the
#: server's).
ERROR_CODES = (
    "NETWORK_ERROR",
    "INVALID_NUMBER",
    "NO_CREDIT",
    "BLOCKED_NUMBER",
    "DEVICE_ERROR",
    "TIMEOUT",
)


@dataclass(frozen=True)
class SimInfo:
    """One SIM slot."""

    slot: int
    carrier: str = ""
    phone_number: str = ""


@dataclass(frozen=True)
class DeviceInfo:
    """What DeviceHello says about the phone."""

    model: str
    android_version: str
    phone_number: str = ""
    sims: tuple[SimInfo, ...] = ()


@dataclass(frozen=True)
class Health:
    """Battery percent, charging, signal bars 0-4."""

    battery: int
    charging: bool
    signal: int


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
    """Outcome of handing one part to the network: ok, or failed with an ERROR_CODES code."""

    ok: bool
    error_code: str = ""
    error_message: str = ""


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
    """A handset delivery report for one part (arrives later, from `run`)."""

    message_id: str
    part_index: int
    part_count: int
    delivered: bool = True
    error_code: str = ""
    error_message: str = ""
    at: datetime | None = None


@dataclass(frozen=True)
class InboundSms:
    """An SMS the phone received."""

    sender: str
    body: str
    sim_slot: int = 0
    received_at: datetime | None = None


SenderEvent = DeliveryReport | InboundSms


@runtime_checkable
class Sender(Protocol):
    """What a backend implements; see the module docstring for the contract."""

    def describe(self) -> DeviceInfo: ...

    async def health(self) -> Health: ...

    async def send(self, request: SendRequest) -> SendResult: ...

    async def run(self, events: trio.MemorySendChannel[SenderEvent]) -> None:
        """Run until cancelled, pushing delivery reports and inbound SMS into `events`."""
        ...

