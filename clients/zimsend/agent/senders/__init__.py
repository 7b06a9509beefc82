"""Senders: what actually hands SMS to a network (see `base.Sender`).

Shipped: `zimsend.agent.senders.simulator.SimulatorSender` (imported from its module, so
that importing the interface does not import trio: the asyncio fleet uses these types too). Termux (`termux-sms-send`) and AT-command modems plug in behind
the same interface.
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
