"""The ZimSend device agent: a phone's side of the DeviceLink stream (SPEC.md §5, §9).

    zimsend device run --pairing 'zimsend://pair?...' --backend simulator

The public surface, re-exported here: `AgentConfig`, `run_agent`, `AgentStopped`, the
`Sender` interface and its data types, `SimulatorSender`, `Journal`, `Backoff`,
`parse_pairing_uri`. Attributes load lazily, so that `zimsend.agent.fleet` (asyncio) can
import the shared, framework-free modules (journal, simulation, pairing) without pulling in
the trio agent.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AgentConfig": "zimsend.agent.agent",
    "AgentStopped": "zimsend.agent.supervisor",
    "run_agent": "zimsend.agent.agent",
    "Backoff": "zimsend.agent.backoff",
    "Journal": "zimsend.agent.journal",
    "PairingInfo": "zimsend.agent.pairing",
    "parse_pairing_uri": "zimsend.agent.pairing",
    "Sender": "zimsend.agent.senders.base",
    "SendRequest": "zimsend.agent.senders.base",
    "SendResult": "zimsend.agent.senders.base",
    "PartResult": "zimsend.agent.senders.base",
    "DeliveryReport": "zimsend.agent.senders.base",
    "InboundSms": "zimsend.agent.senders.base",
    "SimulatorSender": "zimsend.agent.senders.simulator",
    "SimulationConfig": "zimsend.agent.simulation",
}

__all__ = [
    "AgentConfig",
    "AgentStopped",
    "Backoff",
    "DeliveryReport",
    "InboundSms",
    "Journal",
    "PairingInfo",
    "PartResult",
    "SendRequest",
    "SendResult",
    "Sender",
    "SimulationConfig",
    "SimulatorSender",
    "parse_pairing_uri",
    "run_agent",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'zimsend.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
