"""The simulated phone's decisions, without any I/O framework (used by trio and asyncio).

Every decision about one message (how long the handoff takes, whether and how it fails, when
the delivery report comes) is drawn from a `random.Random` seeded by (seed, device, message id,
n-th attempt in this process), so the same seed gives the same outcomes whatever order messages
arrive in. The agent's SimulatorSender (trio) and the fleet (asyncio) only add the sleeping.

The outbox file is the ground truth for "how many times was this SMS sent": one JSON line per
handoff to the (simulated) network, appended with a single `write()` on an O_APPEND descriptor
so lines from several processes never interleave.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from zimsend.agent.senders.base import (
    BEFORE_SEND_CODES,
    ERROR_CODES,
    DeliveryReport,
    Health,
    InboundSms,
    PartResult,
    SendRequest,
    SendResult,
)

__all__ = [
    "DEFAULT_FAILURE_CODES",
    "SendDecision",
    "Simulation",
    "SimulationConfig",
    "read_outbox",
]

#: The codes a simulated failure draws from unless told: SPEC §7's phone codes (the ones that
#: do not prove the SMS stayed on the phone, so nothing is re-routed unless a test asks).
DEFAULT_FAILURE_CODES = tuple(c for c in ERROR_CODES if c not in BEFORE_SEND_CODES)

#: Messages whose attempts and sends a simulated phone remembers (the most recent ones): a
#: phone that runs for days must not keep one entry per SMS it ever sent.
REMEMBERED_MESSAGES = 4096


class _RecentCounter(OrderedDict[str, int]):
    """Counts per key, forgetting the least recently counted beyond REMEMBERED_MESSAGES."""

    def __missing__(self, key: str) -> int:
        return 0

    def __setitem__(self, key: str, value: int) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        if len(self) > REMEMBERED_MESSAGES:
            self.popitem(last=False)


@dataclass(frozen=True)
class SimulationConfig:
    """Knobs of the simulated phone (all the `--send-delay`… flags)."""

    seed: int | None = None
    send_delay: float = 0.2
    #: None (or negative): the network never sends delivery reports.
    delivery_delay: float | None = 1.0
    failure_rate: float = 0.0
    #: FailureCode names (failures.proto); a before-send code (NO_SERVICE…) makes the server
    #: give the message to another phone, an ambiguous one (TIMEOUT, DEVICE_ERROR) does not.
    failure_codes: tuple[str, ...] = DEFAULT_FAILURE_CODES
    outbox: Path | None = None
    #: While this file holds a before-send FailureCode name (NO_SERVICE, RADIO_OFF,
    #: SIM_MISSING, SIM_PIN_REQUIRED), the phone's health says it cannot send, for that
    #: reason: a test writes it to take a phone's network or SIM away, empties it to give
    #: them back.
    health_file: Path | None = None


#: What the phone says for each code a health file may hold (the device list's words).
HEALTH_PROBLEMS = {
    "NO_SERVICE": ("not_registered", "no mobile network (simulated)"),
    "RADIO_OFF": ("", "airplane mode is on (simulated)"),
    "SIM_MISSING": ("", "no SIM card in the phone (simulated)"),
    "SIM_PIN_REQUIRED": ("", "the SIM is locked: enter its PIN on the phone (simulated)"),
}


@dataclass(frozen=True)
class SendDecision:
    """What will happen to one handoff."""

    delay: float
    failure: str | None
    delivery_delay: float | None


@dataclass
class Simulation:
    """Deterministic outcomes and the outbox of one simulated phone."""

    config: SimulationConfig
    device_id: str = "sim"
    #: Handoffs per message id (the recent ones; the outbox file has them all).
    sends: _RecentCounter = field(default_factory=_RecentCounter)
    _attempts: _RecentCounter = field(default_factory=_RecentCounter)
    _inbound_count: int = 0
    _seed: int = 0

    def __post_init__(self) -> None:
        self._seed = (
            self.config.seed
            if self.config.seed is not None
            else random.SystemRandom().getrandbits(32)
        )
        for code in self.config.failure_codes:
            if code not in ERROR_CODES:
                raise ValueError(f"unknown failure code {code!r}; expected one of {ERROR_CODES}")

    def decide(self, message_id: str) -> SendDecision:
        """Draw the outcome of the next handoff of `message_id`."""
        self._attempts[message_id] += 1
        rng = random.Random(
            f"{self._seed}:{self.device_id}:{message_id}:{self._attempts[message_id]}"
        )
        cfg = self.config
        # Up to ±25% around the configured delays, so a fleet does not move in lockstep.
        delay = cfg.send_delay * rng.uniform(0.75, 1.25)
        failure = (
            rng.choice(cfg.failure_codes)
            if cfg.failure_codes and rng.random() < cfg.failure_rate
            else None
        )
        dlr = (
            None
            if cfg.delivery_delay is None or cfg.delivery_delay < 0
            else cfg.delivery_delay * rng.uniform(0.75, 1.25)
        )
        return SendDecision(delay=delay, failure=failure, delivery_delay=dlr)

    def complete(self, request: SendRequest, decision: SendDecision) -> SendResult:
        """Apply a decision once its delay has passed: record the SMS if it went out."""
        now = datetime.now(UTC)
        if decision.failure is not None:
            failed = PartResult(False, decision.failure, f"simulated {decision.failure}")
            return SendResult(parts=tuple(failed for _ in request.parts), at=now)
        self.sends[request.message_id] += 1
        if self.config.outbox is not None:
            line = json.dumps(
                {
                    "message_id": request.message_id,
                    "device_id": self.device_id,
                    "to": request.to,
                    "body": request.body,
                    "parts": len(request.parts),
                    "sent_at": now.isoformat(),
                },
                ensure_ascii=False,
            )
            _append_line(self.config.outbox, line)
        return SendResult(parts=tuple(PartResult(True) for _ in request.parts), at=now)

    def delivery_reports(self, request: SendRequest) -> list[DeliveryReport]:
        """One DELIVERED report per part, to be pushed once the decision's delivery delay has
        passed (the report's time is then taken when it is journaled)."""
        n = len(request.parts)
        return [DeliveryReport(request.message_id, i, n) for i in range(n)]

    def next_inbound(self) -> InboundSms:
        """A deterministic inbound SMS (numbered per phone)."""
        self._inbound_count += 1
        rng = random.Random(f"{self._seed}:{self.device_id}:inbound:{self._inbound_count}")
        sender = "+2637" + "".join(str(rng.randrange(10)) for _ in range(8))
        return InboundSms(
            sender=sender,
            body=f"Simulated inbound SMS #{self._inbound_count}",
            received_at=datetime.now(UTC),
        )

    def health(self) -> Health:
        """Plausible, slowly varying health; deterministic per seed and minute."""
        minute = int(datetime.now(UTC).timestamp() // 60)
        rng = random.Random(f"{self._seed}:{self.device_id}:health:{minute}")
        battery, charging = rng.randint(60, 100), rng.random() < 0.5
        code = self._health_file_code()
        if code:
            network, problem = HEALTH_PROBLEMS[code]
            return Health(
                battery=battery,
                charging=charging,
                signal=0,
                network=network,
                can_send=False,
                problem=problem,
                failure_code=code,
            )
        return Health(battery=battery, charging=charging, signal=rng.randint(2, 4), network="home")

    def _health_file_code(self) -> str:
        """The code the health file holds ("" when absent or empty; an unknown word counts
        as NO_SERVICE, so a typo still takes the phone offline rather than nothing)."""
        if self.config.health_file is None:
            return ""
        try:
            text = self.config.health_file.read_text(encoding="utf-8").strip().upper()
        except FileNotFoundError:
            return ""
        if not text:
            return ""
        return text if text in HEALTH_PROBLEMS else "NO_SERVICE"


def _append_line(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_outbox(path: Path) -> Counter[str]:
    """Sends per message id recorded in an outbox file (a missing file means none)."""
    counts: Counter[str] = Counter()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return counts
    for line in text.splitlines():
        if line.strip():
            counts[json.loads(line)["message_id"]] += 1
    return counts
