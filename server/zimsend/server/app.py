"""The gRPC server process: services, health, reflection, keepalive, graceful shutdown.

One asyncio process running grpc.aio (DESIGN.md: grpcio's async API is asyncio-only and is the
fast path for thousands of phone streams), with uvloop when available.

Shutdown order (DESIGN.md "Phones' streams"): close the call gate (`call_gate`: every new
call is answered UNAVAILABLE "shutting down") and mark health NOT_SERVING so the gateway stops
routing here, let the calls in flight finish (at most `grace`), then run the shutdown hooks (the
device hub tells every phone to reconnect elsewhere), wait until callers stop coming (Envoy's
health check sees NOT_SERVING within a few seconds; at most `grace`), then stop. Phones leave
after the calls: a send accepted during the stop still finds its phone online instead of getting
NO_DEVICE_AVAILABLE.

Health has two levels (issue 12 item 9). The server as a whole (service name "") is SERVING
while it answers calls: Envoy keeps routing to it, so a caller gets the server's own answer.
Each zimsend.v1 service is NOT_SERVING while the database cannot be written (disk full,
read-only): Envoy's `/healthz` checks those (gateway `READINESS_SERVICE`) and says not ready,
while callers get 503 UNAVAILABLE "storage is full" with Retry-After. The server checks the
storage every `STORAGE_CHECK_SECONDS` until it can write again (reopening its connections, and
migrating if it started on an unwritable database), then says SERVING again — no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from zimsend.server import logs, metrics
from zimsend.server.call_gate import CallGate
from zimsend.server.config import Settings
from zimsend.server.gc_pauses import freeze_startup_objects
from zimsend.server.method_handlers import Handler
from zimsend.server.request_decoding import RequestDecoding
from zimsend.server.state import ServerState
from zimsend.server.storage import Database
from zimsend.server.storage.availability import StorageProblem, storage_problem
from zimsend.v1 import common_pb2

log = logs.get("zimsend.server")

#: Twice what Envoy accepts (common.proto `RequestLimit`), plus room for what Envoy adds.
METADATA_LIMIT_BYTES = 2 * common_pb2.REQUEST_LIMIT_HEADER_BYTES + 8 * 1024

# DESIGN.md: grpc core's defaults punish a phone pinging more often than every 5 minutes
# (GOAWAY too_many_pings); these suit phones pinging every 30-60 s on mobile networks.
SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 30_000),
    ("grpc.http2.max_ping_strikes", 2),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.max_connection_age_ms", 30 * 60_000),
    ("grpc.max_connection_age_grace_ms", 60_000),
    # A second server started on a port already in use must fail to bind, not share the port
    # (grpc's Linux default): two processes on one SQLite file would each drive only their own
    # phones (docs/decisions.md, "One server process per SQLite database").
    ("grpc.so_reuseport", 0),
    # Whatever Envoy lets through must reach the handlers (issue 12): grpc core's default
    # (8 KiB soft, 16 KiB hard, random refusals in between) refused valid REST requests with
    # RESOURCE_EXHAUSTED, which Envoy shows as 429. Envoy forwards up to its header limit plus
    # a copy of the URL (`x-envoy-original-path`) and a few headers of its own; soft = hard:
    # no random zone.
    ("grpc.max_metadata_size", METADATA_LIMIT_BYTES),
    ("grpc.absolute_max_metadata_size", METADATA_LIMIT_BYTES),
]

#: A stop waits for this long without a new call before grpc stops listening (see `stop`).
QUIET_BEFORE_STOP_SECONDS = 0.5
#: How often an unwritable database is tried again.
STORAGE_CHECK_SECONDS = 1.0
#: How long a thread may hold the GIL while another waits for it (CPython's default: 5 ms).
#: The event loop shares the GIL with the accept lane, the database threads and grpc's poller
#: thread, which hands completed reads and writes to the loop: with the default, a command
#: written to a phone's stream could wait up to 5 ms per hand-off to leave the process, and a
#: message crosses several hand-offs between accept and phone (docs/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0005

ShutdownHook = Callable[[], Awaitable[None]]


def _generic_handlers_only(server: grpc.aio.Server) -> None:
    """Serve every method through its service's generic handler, not as a "registered
    method". The generated `add_*Servicer_to_server` register both; grpc.aio's accept loop
    then keeps one pending request per registered method (37 here: every service, health,
    reflection) and runs `asyncio.wait` over all of them for each incoming call — 10% of
    the server's CPU under `zimsend bench` (py-spy: `asyncio.wait` and its `iscoroutine`
    checks straight under the event loop), where the one-method ceiling pays nothing for it.
    The generic handlers resolve the same methods (a dict lookup per call)."""

    def ignore(service_name: str, method_handlers: Mapping[str, Handler]) -> None:
        """Registered handlers are not kept: the generic handler added beside them serves."""

    server.add_registered_method_handlers = ignore  # type: ignore[method-assign]  # one instance, on purpose (see docstring)


class ListenError(RuntimeError):
    """The server's gRPC address cannot be bound (`zimsend serve` says so in one line)."""


class ZimSendServer:
    """A configured, not yet started server. `await start()`, then `await wait()` or
    `await stop()`; `bound_port` is the real port (useful with port 0 in tests)."""

    def __init__(self, settings: Settings, *, port: int | None = None) -> None:
        self.settings = settings
        db = Database.from_url(settings.database_url_value)
        self.state = ServerState(settings=settings, db=db, pepper=settings.pepper())
        self._gate = CallGate()
        # RpcMetrics first: calls the gate refuses are counted too.
        self._server = grpc.aio.server(
            options=SERVER_OPTIONS,
            interceptors=[metrics.RpcMetrics(), self._gate, RequestDecoding()],
        )
        _generic_handlers_only(self._server)
        self._health = health.aio.HealthServicer()
        self._shutdown_hooks: list[ShutdownHook] = []
        self._startup_hooks: list[ShutdownHook] = []
        # The event loop keeps only weak references to tasks: these must not vanish mid-way.
        self._readiness_updates: set[asyncio.Task[None]] = set()
        self._stopped = asyncio.Event()
        self._metrics_http: Any = None
        self._migrated = False
        self._storage_watch: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        db.availability.subscribe(self._storage_changed)
        address = f"{settings.grpc_host}:{settings.grpc_port if port is None else port}"
        try:
            self.bound_port = self._server.add_insecure_port(address)
        except RuntimeError as exc:  # grpc's only word for a failed bind
            raise ListenError(
                f"cannot listen on {address}: the port is in use (another zimsend serve?) or "
                "the address is not one of this machine's"
            ) from exc
        self.address = f"{settings.grpc_host}:{self.bound_port}"
        self._service_names = _register_services(self)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )

    @property
    def grpc_server(self) -> grpc.aio.Server:
        return self._server

    def on_startup(self, hook: ShutdownHook) -> None:
        self._startup_hooks.append(hook)

    def on_shutdown(self, hook: ShutdownHook) -> None:
        self._shutdown_hooks.append(hook)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            await self.state.db_call(self.state.db.migrate)
            self._migrated = True
        except Exception as exc:
            if storage_problem(exc) is None:
                raise
            # Start anyway, not ready: callers get 503 "storage …" instead of a dead port, and
            # the storage watch migrates once the database can be written.
        for hook in self._startup_hooks:
            await hook()
        await self._server.start()
        if self.settings.metrics_port:
            self._watch_for_metrics()
            self._metrics_http = metrics.serve(
                self.settings.metrics_host, self.settings.metrics_port, process="server"
            )
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._set_readiness(self.state.db.availability.problem)
        if not self._migrated:
            self._watch_storage()
        log.info("server.started", address=self.address, services=self._service_names)

    def _watch_for_metrics(self) -> None:
        """The gauges read at scrape time: the queue in this server's database, and the
        phones of this replica."""
        from zimsend.server.devicelink import DeviceHub

        sessions = DeviceHub.of(self.state).sessions

        def phones() -> tuple[int, int]:
            live = list(sessions.values())  # one C-level copy: safe from the scrape thread
            online = sum(1 for s in live if s.ready and not s.closed and not s.cannot_send_reason)
            return len(live), online

        metrics.watch(self.state.db, phones)

    def _storage_changed(self, problem: StorageProblem | None) -> None:
        """From any database thread: follow the storage condition in health."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        loop.call_soon_threadsafe(self._on_storage_change, problem)

    def _on_storage_change(self, problem: StorageProblem | None) -> None:
        loop = asyncio.get_running_loop()
        update = loop.create_task(self._set_readiness(self.state.db.availability.problem))
        self._readiness_updates.add(update)
        update.add_done_callback(self._readiness_updates.discard)
        if problem is not None:
            self._watch_storage()

    async def _set_readiness(self, problem: StorageProblem | None) -> None:
        if self._stopped.is_set():
            return
        ready = problem is None and self._migrated
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if ready
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in self._service_names:
            await self._health.set(name, status)

    def _watch_storage(self) -> None:
        if self._storage_watch is None or self._storage_watch.done():
            self._storage_watch = asyncio.get_running_loop().create_task(self._storage_watch_loop())

    async def _storage_watch_loop(self) -> None:
        """Until the database can be written again (and is migrated): try every second."""
        db = self.state.db
        while not self._stopped.is_set():
            await asyncio.sleep(STORAGE_CHECK_SECONDS)
            try:
                if not self._migrated:
                    await self.state.db_call(db.migrate)
                    self._migrated = True
                if await self.state.db_call(db.check_storage) is None:
                    await self._set_readiness(None)
                    return
            except Exception as exc:  # noqa: BLE001 - keep trying; say what is not storage
                logs.failure(log, "server.storage_check_failed", exc)

    async def stop(self, grace: float = 5.0) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        if self._storage_watch is not None:
            self._storage_watch.cancel()
        log.info("server.stopping", grace=grace)
        self._gate.close()
        await self._health.enter_graceful_shutdown()
        if not await self._gate.drained(grace):
            log.warning("server.stop_grace_over", calls_in_flight=self._gate.in_flight)
        for hook in reversed(self._shutdown_hooks):
            with contextlib.suppress(Exception):
                await hook()
        # Calls still arriving when grpc stops would be cancelled (REST: 499, no envelope).
        await self._gate.quiet(QUIET_BEFORE_STOP_SECONDS, timeout=grace)
        await self._server.stop(grace)
        self.state.executor.shutdown(wait=True)
        self.state.link_executor.shutdown(wait=True)
        self.state.intake.close()
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
        self.state.db.dispose()
        log.info("server.stopped")

    async def wait(self) -> None:
        await self._server.wait_for_termination()


def _register_services(server: ZimSendServer) -> list[str]:
    """Add every zimsend.v1 service; returns their full names (for health and reflection)."""
    from zimsend.server.services import register_all

    return register_all(server)


async def serve(settings: Settings, *, port: int | None = None) -> None:
    """Run until SIGINT/SIGTERM, then shut down gracefully."""
    server = ZimSendServer(settings, port=port)
    await server.start()
    freeze_startup_objects()  # short GC pauses from here on (gc_pauses)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(server.wait())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    await server.stop()
    for task in (waiter, stopper):
        task.cancel()


def run(settings: Settings, *, port: int | None = None) -> None:
    """Entry point for `zimsend serve`: uvloop when installed, else the default loop, and a
    short GIL switch interval (`GIL_SWITCH_INTERVAL_S`)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
        asyncio.run(serve(settings, port=port))
    else:
        uvloop.run(serve(settings, port=port))
