"""A webhook receiver that counts: the end of the end-to-end pipeline.

    python -m zimsend.server.bench.receiver --port 50200

Answers every POST with 200 at once and counts deliveries by event type (`event` of the
ZimSend webhook body); `GET /stats` returns the counts as JSON. It does not verify
signatures: the tests do that (tests/_receivers.py with the FAQ's node snippet); here the
receiver must cost as little as possible so that it is never the bottleneck, hence a raw
asyncio protocol on uvloop rather than an HTTP framework, and no node (the bench must run on a
machine with Python alone).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Counts:
    def __init__(self) -> None:
        self.by_type: Counter[str] = Counter()
        self.first_at: float | None = None
        self.last_at: float | None = None

    def add(self, body: bytes) -> None:
        try:
            kind = str(json.loads(body).get("event", "?"))
        except (ValueError, AttributeError):
            kind = "?"
        self.by_type[kind] += 1
        now = time.time()
        self.first_at = self.first_at or now
        self.last_at = now

    def json(self) -> bytes:
        return json.dumps({"by_type": dict(self.by_type), "first_at": self.first_at,
                           "last_at": self.last_at}).encode()


class _Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies (what httpx sends)."""

    def __init__(self, counts: Counts) -> None:
        self.counts = counts
        self.buffer = b""
        self.transport: asyncio.WriteTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment] # uvloop's is no asyncio.Transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[head_end + 4:total]
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            if head.startswith(b"GET /stats"):
                payload = self.counts.json()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(payload)).encode() + b"\r\n\r\n" + payload
                )
            else:
                self.counts.add(body)
                self.transport.write(_OK)


async def serve(port: int) -> None:
    counts = Counts()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(counts), "127.0.0.1", port, backlog=1024)
    print(f"listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    cli()
