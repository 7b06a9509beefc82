"""API keys that passed authentication in the last second, by a keyed hash of the key.

Why a module of its own: `ServerState` holds one (every service shares it) and `auth` fills
it, while `auth` imports `ServerState`; keeping this tiny class apart breaks the cycle. Why
it exists and what it changes for revocation: see `auth`'s docstring.

Entries are found by `fingerprint`: BLAKE2b keyed with a random key of this process, a third
of the peppered HMAC's cost, which is then computed only for the database lookup of a key not
in the cache. Like the HMAC it keeps keys out of memory in clear and cannot be computed
without a secret (here one that never leaves the process).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from typing import Any

#: How long a verified key is trusted without a database lookup.
TTL_SECONDS = 1.0
#: Entries kept at most; when full the cache starts over (keys are looked up again).
MAX_KEYS = 10_000


class VerifiedKeys:
    """key fingerprint -> the authenticated caller, for `ttl` seconds. Thread-safe."""

    def __init__(self, ttl: float = TTL_SECONDS) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._callers: dict[bytes, tuple[float, Any]] = {}
        self._secret = secrets.token_bytes(32)

    def fingerprint(self, api_key: str) -> bytes:
        """What the cache knows `api_key` by (see module docstring)."""
        return hashlib.blake2b(api_key.encode(), key=self._secret, digest_size=32).digest()

    def get(self, fingerprint: bytes) -> Any | None:
        entry = self._callers.get(fingerprint)  # one dict read: atomic, no lock needed
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, fingerprint: bytes, caller: Any) -> None:
        with self._lock:
            if len(self._callers) >= MAX_KEYS:
                self._callers.clear()
            self._callers[fingerprint] = (time.monotonic() + self.ttl, caller)

    def forget(self, key_id: str) -> None:
        """Drop a key (by its id) at once: it was just revoked."""
        with self._lock:
            for key_hash, (_, caller) in list(self._callers.items()):
                if caller.key_id == key_id:
                    del self._callers[key_hash]
