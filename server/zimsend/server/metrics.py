"""Prometheus metrics of the server and the worker (issue 15); docs/operations.md says what
each number means and which alerts are worth setting.

Why module-level metrics in prometheus-client's default registry: one process is one scrape
target (each server replica and each worker has its own port), and the hot paths only do a
counter increment or a histogram observation on a child bound once (an attribute lookup and
prometheus-client's own lock) — no allocation, no label lookup per request.

Labels are bounded sets only: RPC service, method and gRPC code (only registered methods are
measured, so a caller cannot invent label values), failure codes (the phone's are normalised
to the FailureCode names of `failures.proto`), priority names, webhook outcomes. Never a
client, phone, message or request id: those are in the logs (`logs.py`), keyed by the request id.

What depends on the database or the phones (queue depth, oldest due message, phones
connected) is sampled when Prometheus scrapes (`Sampler`), not kept up to date on the hot
paths: one indexed query per scrape.
"""

from __future__ import annotations

import datetime as dt
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
import prometheus_client
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from zimsend.server import failures, logs
from zimsend.server.method_handlers import (
    Behavior,
    Continuation,
    Handler,
    Req,
    Resp,
    awaitable_behavior,
    with_behavior,
)

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from zimsend.server.devicelink.transitions import Transition
    from zimsend.server.storage import Database
    from zimsend.server.webhook_delivery.sender import AttemptOutcome

log = logs.get("zimsend.metrics")

# `*_created` series double the output and no dashboard here reads them.
prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]  # unannotated there

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_WAITS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
_DATABASE = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)

# --- server and worker ---------------------------------------------------------------------

RPC_REQUESTS = Counter(
    "zimsend_rpc_requests",
    "gRPC calls ended, by service, method and gRPC status code "
    "(REST calls arrive through Envoy as gRPC calls).",
    ["service", "method", "code"],
)
RPC_DURATION = Histogram(
    "zimsend_rpc_duration_seconds",
    "Time from a unary or server-streaming call's arrival in the handler chain to its end.",
    ["service", "method"],
    buckets=_FAST,
)
DB_WRITE_SECONDS = Histogram(
    "zimsend_db_write_transaction_seconds",
    "Write transactions (Database.write), from asking for the write lock to the end of the commit.",
    buckets=_DATABASE,
)
MESSAGES_FAILED = Counter(
    "zimsend_messages_failed", "Messages that reached `failed`, by failure code.", ["reason"]
)
MESSAGES_REROUTED = Counter(
    "zimsend_messages_rerouted",
    "Messages a phone failed before they left it, put back in the "
    "queue for another phone (failover), by failure code.",
    ["reason"],
)
for _code in failures.before_send_codes():  # every possible series exists from the start, at 0
    MESSAGES_REROUTED.labels(_code)

# --- server --------------------------------------------------------------------------------

MESSAGES_ACCEPTED = Counter(
    "zimsend_messages_accepted", "Messages queued by send requests (SMS, bulk, OTP)."
)
MESSAGES_SENT = Counter("zimsend_messages_sent", "Messages that reached `sent`.")
MESSAGES_DELIVERED = Counter("zimsend_messages_delivered", "Messages that reached `delivered`.")
DISPATCH_LATENCY = Histogram(
    "zimsend_dispatch_latency_seconds",
    "From a message being due (accepted, or its "
    "scheduled time) to its SendCommand being pushed to a phone.",
    buckets=_WAITS,
)
REPORTS_APPLIED = Counter(
    "zimsend_reports_applied", "Phone reports stored and acknowledged (replays included).", ["kind"]
)

# --- worker --------------------------------------------------------------------------------

WEBHOOK_ATTEMPTS = Counter(
    "zimsend_webhook_attempts", "HTTP attempts to deliver a webhook, by outcome.", ["outcome"]
)
WEBHOOK_SECONDS = Histogram(
    "zimsend_webhook_attempt_duration_seconds",
    "Time of one webhook POST, by outcome.",
    ["outcome"],
    buckets=(*_FAST, 30.0),
)
WEBHOOK_EVENTS = Counter(
    "zimsend_webhook_events",
    "Events whose delivery cycle ended: delivered, retrying (another "
    "attempt is scheduled) or failed (no attempt left).",
    ["result"],
)

_SENT = MESSAGES_SENT
_DELIVERED = MESSAGES_DELIVERED
_STATUS_REPORTS = REPORTS_APPLIED.labels("status")
_INBOUND_REPORTS = REPORTS_APPLIED.labels("inbound")
PRIORITY_NAMES = {1: "urgent", 2: "high", 3: "normal", 4: "low", 5: "very_low"}
WEBHOOK_OUTCOMES = ("success", "http_error", "timeout", "connection_error", "not_sent")


def count_transitions(transitions: Iterable[Transition]) -> None:
    """Count status changes that were committed (a rolled-back batch must not count)."""
    for t in transitions:
        if t.new == "sent":
            _SENT.inc()
        elif t.new == "delivered":
            _DELIVERED.inc()
        elif t.new == "failed":
            MESSAGES_FAILED.labels(t.error_code or failures.FALLBACK).inc()
        elif t.new == "queued":
            MESSAGES_REROUTED.labels(t.error_code or failures.FALLBACK).inc()


def count_reports(status: int, inbound: int) -> None:
    if status:
        _STATUS_REPORTS.inc(status)
    if inbound:
        _INBOUND_REPORTS.inc(inbound)


def dispatched(due_at: dt.datetime, now: dt.datetime) -> float:
    """Observe one pushed command's dispatch latency; returns it in seconds."""
    seconds = max(0.0, (now - due_at).total_seconds())
    DISPATCH_LATENCY.observe(seconds)
    return seconds


def webhook_outcome(outcome: AttemptOutcome) -> str:
    """One of `WEBHOOK_OUTCOMES` for an attempt."""
    if outcome.success:
        return "success"
    if outcome.status is not None:
        return "http_error"
    if outcome.elapsed_ms == 0:
        return "not_sent"  # refused URL, no signing secret, receiver busy: no POST was made
    error = outcome.error or ""
    if error.startswith(("no response within", "timeout")):
        return "timeout"
    return "connection_error"


def webhook_attempted(outcome: AttemptOutcome) -> str:
    kind = webhook_outcome(outcome)
    WEBHOOK_ATTEMPTS.labels(kind).inc()
    if kind != "not_sent":
        WEBHOOK_SECONDS.labels(kind).observe(outcome.elapsed_ms / 1000)
    return kind


# --- the RPC interceptor -------------------------------------------------------------------


class RpcMetrics(grpc.aio.ServerInterceptor):
    """Counts every call of a registered method by gRPC code and times unary and
    server-streaming calls. Install first (`grpc.aio.server(interceptors=[RpcMetrics(), …])`)
    so that calls the call gate refuses are counted too. Phones' bidi streams last hours: they
    are counted when they end, not timed."""

    def __init__(self) -> None:
        # Per method: (the handler it wraps, the measuring one). Built once per method.
        self._measured: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Continuation[Req, Resp],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler  # unknown method: grpc answers UNIMPLEMENTED, nothing is counted
        method: str = handler_call_details.method
        cached = self._measured.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _measuring(handler, _MethodMetrics(method)))
            self._measured[method] = cached
        return cached[1]


class _MethodMetrics:
    """One method's metric children, bound once."""

    __slots__ = ("_codes", "duration", "method", "ok", "service")

    def __init__(self, full_name: str) -> None:
        service, _, self.method = full_name.lstrip("/").partition("/")
        self.service = service.rpartition(".")[2]
        self.duration = RPC_DURATION.labels(self.service, self.method)
        self.ok = RPC_REQUESTS.labels(self.service, self.method, "OK")
        self._codes: dict[str, Any] = {"OK": self.ok}

    def ended(
        self, context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None
    ) -> None:
        code = context.code()
        if code is None or isinstance(code, int):
            name = "OK" if error is None else _code_of(error)
        else:
            name = code.name
        child = self._codes.get(name)
        if child is None:
            child = self._codes[name] = RPC_REQUESTS.labels(self.service, self.method, name)
        child.inc()


def _code_of(error: BaseException) -> str:
    """The code grpc answers for an exception that did not abort the call itself."""
    import asyncio

    return "CANCELLED" if isinstance(error, asyncio.CancelledError) else "UNKNOWN"


def _measuring(handler: Handler, m: _MethodMetrics) -> Handler:
    clock = time.perf_counter
    if handler.unary_unary is not None:
        unary = awaitable_behavior(handler.unary_unary)

        async def measured_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            started = clock()
            try:
                result = await unary(request, context)
            except BaseException as exc:
                m.duration.observe(clock() - started)
                m.ended(context, exc)
                raise
            m.duration.observe(clock() - started)
            if context.code() is None:
                m.ok.inc()
            else:
                m.ended(context, None)
            return result

        return with_behavior(handler, unary_unary=measured_unary)
    if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
        stream: Behavior = handler.unary_stream

        async def measured_stream(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            started = clock()
            error: BaseException | None = None
            try:
                async for item in stream(request, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                m.duration.observe(clock() - started)
                m.ended(context, error)

        return with_behavior(handler, unary_stream=measured_stream)
    if handler.stream_stream is not None and inspect.isasyncgenfunction(handler.stream_stream):
        bidi: Behavior = handler.stream_stream

        async def counted_bidi(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            error: BaseException | None = None
            try:
                async for item in bidi(requests, context):
                    yield item
            except BaseException as exc:
                error = exc
                raise
            finally:
                m.ended(context, error)

        return with_behavior(handler, stream_stream=counted_bidi)
    return handler


# --- sampled at scrape time ----------------------------------------------------------------


class Sampler(Collector):
    """The server's gauges that are read when Prometheus scrapes: the queue (one indexed
    query: `ix_messages_dispatch` starts with `status`) and this replica's phones. Installed
    once per process (`watch`); a failed read leaves the queue out of that scrape."""

    def __init__(self) -> None:
        self.database: Database | None = None
        self.phones: Callable[[], tuple[int, int]] | None = None

    def collect(self) -> Iterable[GaugeMetricFamily]:
        phones = self.phones
        if phones is not None:
            connected, online = phones()
            yield GaugeMetricFamily(
                "zimsend_phones_connected",
                "Phones with an open stream to this replica that said hello.",
                value=connected,
            )
            yield GaugeMetricFamily(
                "zimsend_phones_online",
                "Connected phones that may be given messages (welcomed, not saying they "
                "cannot send).",
                value=online,
            )
        if self.database is not None:
            yield from self._queue(self.database)

    def _queue(self, database: Database) -> Iterable[GaugeMetricFamily]:
        from zimsend.server.storage import utcnow

        now = utcnow()
        try:
            rows = _queue_rows(database, now)
        except Exception as exc:  # noqa: BLE001 - a scrape must not fail on the database
            log.warning("metrics.queue_sample_failed", error=type(exc).__name__)
            return
        depth = GaugeMetricFamily(
            "zimsend_queue_messages",
            "Queued messages (whole database), by priority; `due` "
            "ones wait for a phone now, `scheduled` ones for their time.",
            labels=["priority", "state"],
        )
        oldest = GaugeMetricFamily(
            "zimsend_queue_oldest_due_age_seconds",
            "How long the oldest due queued message "
            "of each priority has been waiting (0: none is waiting).",
            labels=["priority"],
        )
        counts = {(p, s): 0 for p in PRIORITY_NAMES for s in ("due", "scheduled")}
        ages = dict.fromkeys(PRIORITY_NAMES, 0.0)
        for priority, total, due, first in rows:
            if priority not in PRIORITY_NAMES:
                continue
            counts[(priority, "due")] = int(due or 0)
            counts[(priority, "scheduled")] = int(total) - int(due or 0)
            if first is not None and first <= now:  # the oldest queued one is due
                ages[priority] = (now - first).total_seconds()
        for (priority, state), count in counts.items():
            depth.add_metric([PRIORITY_NAMES[priority], state], count)
        for priority, age in ages.items():
            oldest.add_metric([PRIORITY_NAMES[priority]], age)
        yield depth
        yield oldest


def _queue_rows(database: Database, now: dt.datetime) -> list[tuple[int, int, int, Any]]:
    """(priority, queued, due now, oldest due_at) per priority."""
    from sqlalchemy import bindparam, case, func, select

    from zimsend.server.storage import Message, MessageStatus
    from zimsend.server.storage.tables import table_of

    m = table_of(Message).c
    due = case((m.due_at <= bindparam("now", type_=m.due_at.type), 1), else_=0)
    query = (
        select(m.priority, func.count(), func.sum(due), func.min(m.due_at))
        .where(m.status == MessageStatus.QUEUED.value)
        .group_by(m.priority)
    )
    with database.session() as session:
        return [tuple(row) for row in session.execute(query, {"now": now})]


SAMPLER = Sampler()
_registered = False


def watch(
    database: Database | None = None, phones: Callable[[], tuple[int, int]] | None = None
) -> None:
    """Sample the queue of `database` and the phone counts `phones()` at each scrape."""
    global _registered
    if database is not None:
        SAMPLER.database = database
    if phones is not None:
        SAMPLER.phones = phones
    if not _registered:
        prometheus_client.REGISTRY.register(SAMPLER)
        _registered = True


def serve(host: str, port: int, *, process: str) -> WSGIServer:
    """Start the metrics endpoint (`/metrics`, any path) in a thread of its own."""
    server, _thread = prometheus_client.start_http_server(port, addr=host)
    log.info(
        "metrics.listening", process=process, address=f"http://{host}:{server.server_port}/metrics"
    )
    return server
