"""When a failed call is tried again, and after how long.

A retry must never cause a second SMS. So: a refusal the server made before doing anything
(429 `RATE_LIMIT_EXCEEDED`) is retried for every call; a lost answer (connection cut, timeout)
and a 5xx only for calls that are idempotent (reads, settings) or keyed (sends carry an
`Idempotency-Key`, the same on every attempt, so the server answers a repeat with the
original reply). The wait is the server's `Retry-After` when it gave one, else exponential
backoff with jitter; a `Retry-After` longer than `max_wait` is not waited for but raised.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ._errors import TransportError, ZimSendError
from ._transport import Operation

__all__ = ["Retries"]

_RETRYABLE_5XX = {502, 503, 504}


@dataclass(frozen=True)
class Retries:
    """`max_retries` retries after the first attempt; backoff `backoff * 2**n` seconds (with
    jitter, at most `backoff_max`) when the server gave no `Retry-After`."""

    max_retries: int = 3
    backoff: float = 0.5
    backoff_max: float = 8.0
    max_wait: float = 60.0

    def delay(self, op: Operation, error: ZimSendError, attempt: int) -> float | None:
        """Seconds to wait before retry number `attempt + 1`, or None: raise `error`."""
        if attempt >= self.max_retries or not self._retryable(op, error):
            return None
        if error.retry_after is not None:
            return error.retry_after if error.retry_after <= self.max_wait else None
        ceiling = min(self.backoff_max, self.backoff * 2**attempt)
        return random.uniform(ceiling / 2, ceiling)

    @staticmethod
    def _retryable(op: Operation, error: ZimSendError) -> bool:
        if error.code == "RATE_LIMIT_EXCEEDED":
            return True
        safe = op.idempotent or op.keyed
        if isinstance(error, TransportError):
            return safe
        return safe and error.http_status in _RETRYABLE_5XX
