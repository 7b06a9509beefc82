"""Reconnect delays: exponential backoff with full jitter, capped, reset after a healthy link.

Why full jitter (a delay drawn uniformly from 0 to the exponential bound): when a server
restarts, thousands of phones lose their stream in the same second. Fixed or "equal" jitter
keeps them in waves; full jitter spreads them over the whole window, and opening ~4,000 streams
at the same instant is known to fail (DESIGN.md, Phones' streams).

A delay the server asks for (a busy server's RetryInfo, a Reconnect's `retry_after_ms`) is a
slot it chose for this phone; `honour` keeps it as the minimum and adds a little jitter, so the
phones given the same slot do not arrive in the same millisecond.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    """Delays for successive failed attempts: uniform(0, min(cap, base * factor**n)).

    `reset()` after a connection that stayed healthy, so one blip after hours of service does
    not start at the cap. `rng` is injectable for deterministic tests.
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random, repr=False)
    attempt: int = 0

    def bound(self) -> float:
        """The upper bound of the next delay."""
        # min() before the power would overflow after ~1000 attempts; clamp the exponent.
        return min(self.cap, self.base * self.factor ** min(self.attempt, 64))

    def next(self) -> float:
        """The delay before the next attempt; each call widens the window until the cap."""
        delay = self.rng.uniform(0.0, self.bound())
        self.attempt += 1
        return delay

    def honour(self, server_delay: float) -> float:
        """The wait for a delay the server chose: `server_delay` plus up to 20 % (at least
        0.1 s) of jitter. The exponential window is left as it was."""
        return server_delay + self.rng.uniform(0.0, max(0.1, 0.2 * server_delay))

    def reset(self) -> None:
        """Back to the smallest window (call after a healthy connection)."""
        self.attempt = 0
