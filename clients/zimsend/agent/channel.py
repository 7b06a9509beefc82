"""How a phone's gRPC channel is configured (shared by the trio agent and the asyncio fleet).

Keepalive must match the server's enforcement (DESIGN.md, Phones' streams): grpc core punishes
a client that pings more often than the server allows with GOAWAY `too_many_pings`, and mobile
NATs drop idle flows within minutes. The server accepts a ping every 30 s; we ping every 45 s.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["KEEPALIVE_OPTIONS"]

#: Ping every 45 s, even without active calls, never stop pinging for lack of data, and give
#: up on a peer that does not answer a ping within 20 s.
KEEPALIVE_OPTIONS: Sequence[tuple[str, int]] = (
    ("grpc.keepalive_time_ms", 45_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)
