"""DeviceLinkService.Connect: the stream every phone holds (protos/zimsend/v1/device_link.proto).

The handler only does what belongs to one call: authenticate the device from the call
metadata, require DeviceHello first, then run two tasks side by side — a reader that hands
each frame to the hub, and a writer that drains the session's frame queue into the call
(grpc.aio allows one writer per call) — until either ends. Everything shared between streams
(presence, dispatch, reports) lives in `zimsend.server.devicelink`.

How a stream ends decides the `device.disconnected` reason. Every end on the phone's side — a
reset, a killed app, a half-close, a heartbeat timeout — is CONNECTION_LOST: grpc.aio shows a
dropped connection and a clean half-close alike (the request iterator just ends), and the
protocol has no "I am logging out" frame, so USER_LOGOUT/APP_CLOSED cannot be told apart
honestly. A stream the server closes carries its own reason (UNKNOWN with a `detail`), and a
stream replaced by a newer connection of the same device writes no event at all.

Admission (`ConnectGate`): when more phones are connecting than the server can welcome within
a few seconds, a new call is refused at once — UNAVAILABLE with a RetryInfo delay — before any
work is spent on it. Without this, a reconnect storm (a server restart with 10,000 phones)
queued connects for longer than a phone waits for Welcome (30 s); phones gave up, retried, and
the retries were more load (70,080 attempts for 10,000 phones, `zimsend bench` streams). A
refused phone instead waits the delay it was given, and each refusal gets a later slot, so the
phones come back at about the rate the server welcomes them.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc

from zimsend.server import logs
from zimsend.server.auth import metadata_value
from zimsend.server.devicelink import DeviceHub
from zimsend.server.devicelink.connections import authenticate_device
from zimsend.server.devicelink.session import DeviceSession
from zimsend.server.errors import ApiError, ErrorCode, abort, known_error
from zimsend.server.state import ServerState
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import device_link_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

log = logs.get("zimsend.devicelink")

#: Initial metadata sent once a stream is admitted and authenticated: an asyncio phone (the
#: fleet) says hello only after it, because grpc.aio turns a refusal that races the phone's
#: first write into a bare INTERNAL, losing the status and its retry delay.
ADMITTED = (("zimsend-admitted", "1"),)


class ConnectGate:
    """How many streams may be connecting at once (from the call's start until Welcome), and
    when a refused phone should come back.

    The limit follows Little's law: connects in progress / welcomes per second = how long a
    new phone would wait. It is `TARGET_WAIT_S` worth of the welcome rate measured over the
    last `RATE_WINDOW_S` (while the server sheds, that is its capacity), never below `FLOOR`
    (a fresh server has measured nothing yet). A refused phone is given the next free slot:
    after the connects already waiting, one more `1/rate` apart per refusal, so a burst of
    refusals comes back spread at the rate the server welcomes, not all at once.
    """

    TARGET_WAIT_S = 3.0
    FLOOR = 100
    RATE_WINDOW_S = 2.0
    #: Assumed welcomes per second before any were measured (an underestimate only makes
    #: refused phones wait longer; an overestimate costs a few more refusals).
    PRIOR_RATE = 300.0
    MIN_DELAY_S = 0.5
    MAX_DELAY_S = 30.0

    def __init__(self, fixed_limit: int | None = None) -> None:
        self.fixed_limit = fixed_limit
        self.pending = 0
        self.refused = 0
        self._welcomed: deque[float] = deque()
        self._next_slot = 0.0

    def rate(self, now: float) -> float:
        """Welcomes per second over the last window."""
        while self._welcomed and self._welcomed[0] < now - self.RATE_WINDOW_S:
            self._welcomed.popleft()
        return len(self._welcomed) / self.RATE_WINDOW_S

    def enter(self) -> float | None:
        """Admit a new connect (None; call `leave` when it ends) or refuse it: the seconds
        after which the phone should try again."""
        now = time.monotonic()
        rate = self.rate(now)
        limit = self.fixed_limit or max(self.FLOOR, int(rate * self.TARGET_WAIT_S))
        if self.pending < limit:
            self.pending += 1
            return None
        self.refused += 1
        if self.fixed_limit is None:
            rate = max(rate, self.PRIOR_RATE)
        rate = max(rate, 1.0)
        slot = max(self._next_slot, now + self.pending / rate)
        self._next_slot = slot + 1 / rate
        return min(self.MAX_DELAY_S, max(self.MIN_DELAY_S, slot - now))

    def leave(self, *, welcomed: bool) -> None:
        self.pending -= 1
        if welcomed:
            self._welcomed.append(time.monotonic())


def peer_ip(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
    """`ipv4:1.2.3.4:567` / `ipv6:[::1]:567` → the address alone."""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rpartition(":")[0] or None
    if kind == "ipv6":
        return rest.rpartition(":")[0].strip("[]") or None
    return None


class DeviceLinkService(pb_grpc.DeviceLinkServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.hub = DeviceHub.of(state)
        self.gate = ConnectGate(state.settings.device_connects_pending_max)

    # The stubs know only the iterator form of a streaming handler; grpc.aio also lets one
    # write through `context.write` and return None, which the session's writer task does.
    async def Connect(  # type: ignore[override]  # noqa: N802 - gRPC method name
        self,
        request_iterator: AsyncIterator[pb.DeviceFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> None:
        if self.hub.closing:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "Server shutting down; reconnect.")
        delay = self.gate.enter()
        if delay is not None:
            await abort(
                context,
                ApiError(
                    ErrorCode.SERVER_BUSY,
                    f"Too many phones are connecting right now; retry in {delay:.1f} s.",
                    retry_after_seconds=delay,
                ),
            )
            return
        welcomed = False
        try:
            session = await self._connect(request_iterator, context)
            welcomed = session is not None
        finally:
            self.gate.leave(welcomed=welcomed)
        if session is None:
            return
        reader = asyncio.create_task(self._read(request_iterator, session))
        writer = asyncio.create_task(self._write(context, session))
        ended = asyncio.create_task(session.ended.wait())
        try:
            await asyncio.wait({reader, writer, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (reader, writer, ended):
                task.cancel()
            self.hub.detach(session)

    async def _connect(
        self,
        request_iterator: AsyncIterator[pb.DeviceFrame],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> DeviceSession | None:
        """Authenticate, wait for hello, register the stream (Welcome queued); None when the
        call was refused (already aborted)."""
        try:
            device_id = await self.state.db_call(
                authenticate_device,
                self.state.db,
                self.state.pepper,
                metadata_value(context, "x-client-id") or "",
                metadata_value(context, "x-device-id") or "",
                metadata_value(context, "x-device-password") or "",
            )
            await context.send_initial_metadata(ADMITTED)
            hello = await self._hello(
                request_iterator, self.state.settings.device_hello_timeout_seconds
            )
        except grpc.aio.AbortError:  # grpc already ended the call (an undecodable frame)
            raise
        except Exception as exc:  # noqa: BLE001 - the phone gets a status, never our internals
            await abort(context, _refusal(exc))
            return None
        # Shielded: a phone vanishing while its presence row is being written must still be
        # detached (marked offline, `device.disconnected`) once that write is done.
        connecting = asyncio.ensure_future(
            self.hub.connect(device_id, hello, peer_ip(context), asyncio.current_task())
        )
        try:
            session = await asyncio.shield(connecting)
        except asyncio.CancelledError:
            connecting.add_done_callback(self._detach_late)
            raise
        except Exception as exc:  # noqa: BLE001 - deleted while connecting, storage, a bug
            await abort(context, _refusal(exc))
            return None
        return session

    def _detach_late(self, connecting: asyncio.Future[DeviceSession]) -> None:
        if not connecting.cancelled() and connecting.exception() is None:
            self.hub.detach(connecting.result())

    async def _hello(
        self,
        requests: AsyncIterator[pb.DeviceFrame],
        timeout: float,  # noqa: ASYNC109 - the deadline is part of this call's contract
    ) -> pb.DeviceHello:
        """The stream's first frame, which must be a hello sent within `timeout` seconds
        (`device_hello_timeout_seconds`): a silent stream would hold its connect slot."""
        try:
            first = await asyncio.wait_for(anext(requests), timeout)
        except TimeoutError:
            raise ApiError(
                ErrorCode.HELLO_TIMEOUT,
                f"No DeviceHello within {timeout:g} s of connecting; a phone must send hello "
                "as its first frame. Reconnect and say hello first.",
            ) from None
        except StopAsyncIteration:
            raise ApiError(
                ErrorCode.INVALID_REQUEST, "The first frame of a DeviceLink stream must be hello."
            ) from None
        if first.WhichOneof("frame") != "hello":
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"The first frame of a DeviceLink stream must be hello, not "
                f"{first.WhichOneof('frame') or 'an empty frame'}.",
            )
        return first.hello

    async def _read(self, requests: AsyncIterator[pb.DeviceFrame], session: DeviceSession) -> None:
        async for frame in requests:
            try:
                self.hub.on_frame(session, frame)
            except Exception as exc:  # a bug handling one frame must not cut the phone off
                logs.failure(log, "devicelink.frame_failed", exc, device_id=session.device_id)

    async def _write(
        self, context: grpc.aio.ServicerContext[Any, Any], session: DeviceSession
    ) -> None:
        while True:
            frame = await session.next_frame()
            if frame is None:
                return
            await context.write(frame)


def _refusal(exc: Exception) -> ApiError:
    """What a phone is told when its connect fails: the ApiError itself, UNAVAILABLE with a
    retry delay while storage cannot be written, else INTERNAL (logged here) — never the
    exception's text, which can hold SQL (issue 12 item 9)."""
    known = known_error(exc)
    if known is not None:
        return known
    log.error("devicelink.connect_failed", exc_info=exc)
    return ApiError(
        ErrorCode.INTERNAL, "Internal error while connecting; it was logged. Reconnect in a moment."
    )


def register(server: ZimSendServer) -> str:
    service = DeviceLinkService(server.state)
    pb_grpc.add_DeviceLinkServiceServicer_to_server(service, server.grpc_server)
    server.on_startup(service.hub.start)
    server.on_shutdown(service.hub.shutdown)
    return "zimsend.v1.DeviceLinkService"
