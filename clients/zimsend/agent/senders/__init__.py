"""Senders: what actually hands SMS to a network (see `base.Sender`).

Shipped, each imported from its own module (importing the interface must not import trio:
the asyncio fleet uses these types too):

- `simulator.SimulatorSender`: a simulated phone (tests, demos, load);
- `modem.ModemSender`: a GSM modem through Gammu (`zimsend-client[modem]`);
- `termux.TermuxSender`: the Android phone the agent runs on, through Termux:API's commands
  (no delivery reports: its messages stay `sent`).

docs/phones.md says how to set up each real one and what each can report.
"""

from zimsend.agent.senders.base import (
    ERROR_CODES,
    DeliveryReport,
    DeviceInfo,
    Health,
    InboundSms,
    PartResult,
    Sender,
    SenderEvent,
    SendRequest,
    SendResult,
    SimInfo,
)

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
