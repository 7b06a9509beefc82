"""The load generator: SendSms calls with N in flight, in its own process.

    python -m zimsend.server.bench.loadgen --mode grpc --target 127.0.0.1:50051 \
        --concurrency 64 --duration 10 --out result.json

Why a separate process: the generator must not share a GIL or an event loop with what it
measures; its own CPU share is in the result, so the bench can say whether it was the limit.

Modes: `grpc` (grpc.aio SmsService.SendSms, also used against the ceiling server) and `rest`
(POST /v1/sms/send as JSON over HTTP/1.1 keep-alive connections, one per in-flight request).
The REST client is a minimal raw asyncio one on purpose: httpx costs several times more CPU per
request than Envoy does, and would measure itself rather than the gateway.

Closed loop by default (each of N workers sends, waits, sends again); with `--rate R` open
loop: a request every 1/R s, at most N in flight (a late request is sent at once, so the
offered rate holds as long as the server keeps up). A closed-loop worker refused with a
Retry-After (backpressure, rate limit) waits that long before its next request. Requests that
end during the first `--warmup` seconds are not counted. Credentials come from
ZIMSEND_BENCH_CLIENT_ID and ZIMSEND_BENCH_API_KEY (not argv: visible in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import resource
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from zimsend.server.bench.measure import summarize_ms
from zimsend.timestamps import rfc3339
from zimsend.v1 import sms_pb2, sms_pb2_grpc

#: What one call returns: (outcome label, message id, queued_at epoch seconds, the seconds a
#: refusal asked the caller to wait — its Retry-After — or 0).
Outcome = tuple[str, str, float, float]
Call = Callable[[int], Awaitable[Outcome]]

SCHEDULE_AHEAD = dt.timedelta(days=29)


def _number(n: int) -> str:
    return f"+2637{7 + n % 2}{n % 10_000_000:07d}"  # Zimbabwe mobile: +263 77/78 + 7 digits


def _scheduled_at() -> str:
    return rfc3339((dt.datetime.now(dt.UTC) + SCHEDULE_AHEAD).replace(microsecond=0))


def grpc_call(
    target: str, metadata: tuple[tuple[str, str], ...], scheduled: bool, channels: int
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    pool = [grpc.aio.insecure_channel(target) for _ in range(max(1, channels))]
    stubs = [sms_pb2_grpc.SmsServiceStub(c) for c in pool]
    when = _scheduled_at() if scheduled else ""

    async def call(n: int) -> Outcome:
        request = sms_pb2.SendSmsRequest(
            to=_number(n), message=f"Bench message {n}", scheduled_at=when
        )
        try:
            reply = await stubs[n % len(stubs)].SendSms(request, metadata=metadata, timeout=30)
        except grpc.aio.AioRpcError as exc:
            wait = dict(exc.initial_metadata() or ()).get("retry-after", 0)
            return exc.code().name, "", 0.0, float(wait)
        return "OK", reply.message_id, reply.queued_at.seconds + reply.queued_at.nanos / 1e9, 0.0

    async def close() -> None:
        for channel in pool:
            await channel.close()

    return call, close


class _HttpConnection:
    """One keep-alive HTTP/1.1 connection: write a request, read status line, headers, body."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length, close = 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.writer.close()
            self.writer = None
        return status, body


def rest_call(
    base_url: str, client_id: str, api_key: str, scheduled: bool, concurrency: int
) -> tuple[Call, Callable[[], Awaitable[None]]]:
    hostport = base_url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    free: list[_HttpConnection] = [_HttpConnection(host, int(port)) for _ in range(concurrency)]
    when = _scheduled_at() if scheduled else ""

    async def call(n: int) -> Outcome:
        payload: dict[str, Any] = {"to": _number(n), "message": f"Bench message {n}"}
        if when:
            payload["scheduled_at"] = when
        body = json.dumps(payload).encode()
        raw = (
            f"POST /v1/sms/send HTTP/1.1\r\nHost: {hostport}\r\nContent-Type: application/json"
            f"\r\nX-API-Key: {api_key}\r\nX-Client-ID: {client_id}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body
        connection = free.pop()
        try:
            status, data = await connection.request(raw)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            connection.writer = None
            return "CONNECTION_ERROR", "", 0.0, 0.0
        finally:
            free.append(connection)
        if status != 200:
            return f"HTTP_{status}", "", 0.0, 0.0
        return "OK", json.loads(data).get("message_id", ""), 0.0, 0.0

    async def close() -> None:
        for connection in free:
            if connection.writer is not None:
                connection.writer.close()

    return call, close


async def drive(
    call: Call,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    rate: float | None,
    record: bool,
) -> dict[str, Any]:
    """Run the load; returns counts, latencies (after warmup), per-second OK counts and, with
    `record`, every accepted (message id, queued_at)."""
    start = time.monotonic()
    measure_from, end = start + warmup, start + warmup + duration
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    per_second: Counter[int] = Counter()
    accepted: list[tuple[str, float]] = []
    counter = iter(range(10**12))

    async def one(n: int) -> float:
        began = time.monotonic()
        label, message_id, queued_at, retry_after = await call(n)
        done = time.monotonic()
        if record and message_id:
            accepted.append((message_id, queued_at))
        if done >= measure_from:
            outcomes[label] += 1
            latencies.append(done - began)
            if label == "OK":
                per_second[int(done - measure_from)] += 1
        return retry_after

    async def closed_worker() -> None:
        while time.monotonic() < end:
            retry_after = await one(next(counter))
            if retry_after:  # a well-behaved client waits as the refusal asked
                await asyncio.sleep(min(retry_after, max(0.0, end - time.monotonic())))

    cpu0, wall0 = _cpu(), time.monotonic()
    if rate is None:
        await asyncio.gather(*(closed_worker() for _ in range(concurrency)))
    else:
        slots = asyncio.Semaphore(concurrency)
        tasks: set[asyncio.Task[None]] = set()

        async def paced(n: int) -> None:
            try:
                await one(n)
            finally:
                slots.release()

        next_at = start
        while next_at < end and time.monotonic() < end:
            await slots.acquire()
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(paced(next(counter)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            next_at += 1 / rate
        await asyncio.gather(*list(tasks))
    cpu1, wall1 = _cpu(), time.monotonic()
    ok = outcomes.get("OK", 0)
    measured = max(1e-9, min(wall1, end) - measure_from)
    return {
        "requests": sum(outcomes.values()),
        "ok": ok,
        "outcomes": dict(outcomes),
        "seconds": round(measured, 3),
        "rps": round(ok / measured, 1),
        "offered_rps": rate,
        "concurrency": concurrency,
        "latency": summarize_ms(latencies),
        "per_second": [per_second.get(i, 0) for i in range(int(duration))],
        "cpu_share": round((cpu1 - cpu0) / max(1e-9, wall1 - wall0), 3),
        "accepted": accepted if record else None,
    }


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def main(args: argparse.Namespace) -> dict[str, Any]:
    client_id = os.environ.get("ZIMSEND_BENCH_CLIENT_ID", "bench")
    api_key = os.environ.get("ZIMSEND_BENCH_API_KEY", "bench")
    if args.mode == "rest":
        call, close = rest_call(args.target, client_id, api_key, args.scheduled, args.concurrency)
    else:
        metadata = (("x-api-key", api_key), ("x-client-id", client_id))
        call, close = grpc_call(args.target, metadata, args.scheduled, args.channels)
    try:
        return await drive(
            call,
            concurrency=args.concurrency,
            duration=args.duration,
            warmup=args.warmup,
            rate=args.rate,
            record=args.record,
        )
    finally:
        await close()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("grpc", "rest"), required=True)
    parser.add_argument("--target", required=True, help="host:port (grpc) or base URL (rest)")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--channels", type=int, default=1, help="gRPC channels (connections)")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=float, default=None, help="open loop: requests/s")
    parser.add_argument(
        "--scheduled",
        action="store_true",
        help="scheduled_at 29 days ahead: measures the accept path only",
    )
    parser.add_argument("--record", action="store_true", help="keep accepted message ids")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a server dependency on Linux
        result = asyncio.run(main(args))
    else:
        result = uvloop.run(main(args))
    args.out.write_text(json.dumps(result))


if __name__ == "__main__":
    cli()
