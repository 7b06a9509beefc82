"""API keys that passed authentication in the last second, by their peppered HMAC.

Why a module of its own: `ServerState` holds one (every service shares it) and `auth` fills
it, while `auth` imports `ServerState`; keeping this tiny class apart breaks the cycle. Why
it exists and what it changes for revocation: see `auth`'s docstring.
"""

from __future__ import annotations

import threading
import time
from typing import Any

#: How long a verified key is trusted without a database lookup.
TTL_SECONDS = 1.0
#: Entries kept at most; when full the cache starts over (keys are looked up again).
MAX_KEYS = 10_000


class VerifiedKeys:
    """key HMAC -> the authenticated caller, for `ttl` seconds. Thread-safe."""

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._callers: dict[str, tuple[float, Any]] = {}

    def get(self, key_hash: str) -> Any | None:
        with self._lock:
            entry = self._callers.get(key_hash)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key_hash: str, caller: Any) -> None:
        with self._lock:
            if len(self._callers) >= MAX_KEYS:
                self._callers.clear()
            self._callers[key_hash] = (time.monotonic() + self.ttl, caller)

    def forget(self, key_id: str) -> None:
        """Drop a key (by its id) at once: it was just revoked."""
        with self._lock:
            for key_hash, (_, caller) in list(self._callers.items()):
                if caller.key_id == key_id:
                    del self._callers[key_hash]
