"""A webhook receiver that counts: the end of the end-to-end pipeline.

    python -m zimsend.server.bench.receiver --port 50200 [--secret whsec_…]

Answers every POST with 200 at once and counts deliveries by event type (`event` of the
ZimSend webhook body); `GET /stats` returns the counts as JSON. The receiver must cost as
little as possible so that it is never the bottleneck, hence a raw asyncio protocol on uvloop
rather than an HTTP framework, and no node (the bench must run on a machine with Python alone).

With `--secret` (the webhook-throughput scenario) it also checks what a customer's receiver
would: both signatures of every POST (`X-Webhook-Signature` and Standard Webhooks'
`webhook-signature` over `id.timestamp.body`, `webhook-id` equal to the body's `event_id`), and
counts distinct `event_id`s, so the bench can say every event arrived, signed, at least once.
Two HMACs per POST are a few microseconds; the thorough check with the FAQ's node snippet and
the `standardwebhooks` package is the tests' (tests/_receivers.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections import Counter

from zimsend.server.webhook_delivery.signing import standard_webhooks_key

_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class Counts:
    def __init__(self, secret: str | None = None) -> None:
        self.by_type: Counter[str] = Counter()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.secret = secret.encode() if secret else None
        self.standard_key = standard_webhooks_key(secret) if secret else None
        self.event_ids: set[str] = set()
        self.posts = 0
        self.bad_signatures = 0

    def add(self, body: bytes, headers: dict[bytes, bytes] | None = None) -> None:
        event_id = ""
        try:
            decoded = json.loads(body)
            kind = str(decoded.get("event", "?"))
            event_id = str(decoded.get("event_id", ""))
        except (ValueError, AttributeError):
            kind = "?"
        self.by_type[kind] += 1
        self.posts += 1
        if headers is not None:
            if self._signed(body, headers, event_id):
                self.event_ids.add(event_id)
            else:
                self.bad_signatures += 1
        now = time.time()
        self.first_at = self.first_at or now
        self.last_at = now

    def _signed(self, body: bytes, headers: dict[bytes, bytes], event_id: str) -> bool:
        assert self.secret is not None
        assert self.standard_key is not None
        plain = hmac.new(self.secret, body, hashlib.sha256).hexdigest().encode()
        webhook_id = headers.get(b"webhook-id", b"")
        signed = webhook_id + b"." + headers.get(b"webhook-timestamp", b"") + b"." + body
        standard = b"v1," + base64.b64encode(
            hmac.new(self.standard_key, signed, hashlib.sha256).digest()
        )
        return (
            bool(event_id)
            and webhook_id == event_id.encode()
            and hmac.compare_digest(plain, headers.get(b"x-webhook-signature", b""))
            and hmac.compare_digest(standard, headers.get(b"webhook-signature", b""))
        )

    def json(self) -> bytes:
        stats: dict[str, object] = {
            "by_type": dict(self.by_type),
            "first_at": self.first_at,
            "last_at": self.last_at,
            "posts": self.posts,
        }
        if self.secret is not None:
            stats.update(event_ids=len(self.event_ids), bad_signatures=self.bad_signatures)
        return json.dumps(stats).encode()


class _Http(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and Content-Length bodies (what the worker sends)."""

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
            headers: dict[bytes, bytes] = {}
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            total = head_end + 4 + length
            if len(self.buffer) < total:
                return
            body = self.buffer[head_end + 4 : total]
            self.buffer = self.buffer[total:]
            assert self.transport is not None
            if head.startswith(b"GET /stats"):
                payload = self.counts.json()
                self.transport.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                    + str(len(payload)).encode()
                    + b"\r\n\r\n"
                    + payload
                )
            else:
                self.counts.add(body, headers if self.counts.secret is not None else None)
                self.transport.write(_OK)


async def serve(port: int, secret: str | None = None) -> None:
    counts = Counts(secret)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Http(counts), "127.0.0.1", port, backlog=1024)
    print(f"listening on {port}", flush=True)
    async with server:
        await server.serve_forever()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", help="verify both signatures with this webhook secret")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(serve(args.port, args.secret))
    else:
        uvloop.run(serve(args.port, args.secret))


if __name__ == "__main__":
    cli()
