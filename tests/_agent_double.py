"""A minimal *test double* of the server's DeviceLink side, for the device agent's tests.

NOT the real server. The real DeviceLink hub is written in parallel (issue 4); the end-to-end
tests of the agent against the real server come with issue 4's server side, and this double
should then shrink to the protocol corner cases the real server cannot be made to produce.

It speaks the frame order of protos/zimsend/v1/device_link.proto: checks the x-client-id /
x-device-id / x-device-password metadata (refusing with UNAUTHENTICATED + ErrorInfo), expects
DeviceHello first, answers Welcome, acknowledges every report with ReportAck (unless told not
to), and lets the test push any ServerFrame. It runs grpc.aio on its own asyncio loop in a
background thread, so trio tests (sync grpcio in threads) and asyncio tests can both use it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from zimsend.v1 import common_pb2
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import device_link_pb2_grpc as pb_grpc

_CLOSE = object()


@dataclass
class Device:
    client_id: str
    password: str
    refuse_reason: str = ""  # e.g. DEVICE_DISABLED: refuse with PERMISSION_DENIED


@dataclass
class DeviceLinkDouble(pb_grpc.DeviceLinkServiceServicer):
    settings: pb.DeviceSettings = field(
        default_factory=lambda: pb.DeviceSettings(
            send_interval_ms=0, daily_cap=0, heartbeat_interval_seconds=30, enabled=True
        )
    )
    auto_ack_reports: bool = True
    devices: dict[str, Device] = field(default_factory=dict)
    port: int = 0
    connects: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refusals: int = 0
    _frames: dict[str, list[pb.DeviceFrame]] = field(default_factory=lambda: defaultdict(list))
    _queues: dict[str, asyncio.Queue[object]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _server: grpc.aio.Server | None = None
    _thread: threading.Thread | None = None
    #: (cert PEM, key PEM) to listen with TLS instead of plaintext.
    tls: tuple[bytes, bytes] | None = None

    # --- test-facing (any thread) ---------------------------------------------------------

    def add_device(
        self,
        device_id: str,
        client_id: str = "client_test",
        password: str = "pw",
        refuse_reason: str = "",
    ) -> None:
        self.devices[device_id] = Device(client_id, password, refuse_reason)

    def start(self) -> int:
        ready = threading.Event()

        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._start(ready))
            self._loop.run_forever()

        self._thread = threading.Thread(target=serve, name="devicelink-double", daemon=True)
        self._thread.start()
        assert ready.wait(10), "the DeviceLink double did not start"
        return self.port

    def stop(self) -> None:
        if self._loop is None or self._server is None:
            return
        asyncio.run_coroutine_threadsafe(self._server.stop(0), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        assert self._thread is not None
        self._thread.join(10)

    def push(self, device_id: str, frame: pb.ServerFrame) -> None:
        """Send a frame on the device's current stream (no-op when it is not connected)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._put, device_id, frame)

    def send_command(
        self,
        device_id: str,
        message_id: str,
        body: str = "hello",
        *,
        to: str = "+263771234567",
        redelivery: bool = False,
        priority: int = 3,
        command_id: str | None = None,
    ) -> None:
        self.push(
            device_id,
            pb.ServerFrame(
                send=pb.SendCommand(
                    command_id=command_id or f"cmd-{message_id}-{time.monotonic_ns()}",
                    message_id=message_id,
                    to=to,
                    body=body,
                    priority=common_pb2.Priority.ValueType(priority),
                    redelivery=redelivery,
                )
            ),
        )

    def drop(self, device_id: str) -> None:
        """End the device's stream cleanly (status OK), as a crashed proxy might."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._put, device_id, _CLOSE)

    def frames(self, device_id: str, kind: str | None = None) -> list[pb.DeviceFrame]:
        with self._lock:
            got = list(self._frames[device_id])
        return [f for f in got if kind is None or f.WhichOneof("frame") == kind]

    def reports(self, device_id: str) -> list[pb.StatusReport]:
        return [f.report for f in self.frames(device_id, "report")]

    def connected(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._queues

    # --- the servicer (double's loop) -----------------------------------------------------

    async def _start(self, ready: threading.Event) -> None:
        self._server = grpc.aio.server()
        pb_grpc.add_DeviceLinkServiceServicer_to_server(self, self._server)
        if self.tls is None:
            self.port = self._server.add_insecure_port("127.0.0.1:0")
        else:
            credentials = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
            self.port = self._server.add_secure_port("127.0.0.1:0", credentials)
        await self._server.start()
        ready.set()

    def _put(self, device_id: str, item: object) -> None:
        queue = self._queues.get(device_id)
        if queue is not None:
            queue.put_nowait(item)

    async def Connect(  # type: ignore[override]  # grpc.aio: a stream handler may write()
        self, request_iterator: object, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        md = dict(context.invocation_metadata() or ())
        device_id = str(md.get("x-device-id", ""))
        device = self.devices.get(device_id)
        if (
            device is None
            or md.get("x-client-id") != device.client_id
            or md.get("x-device-password") != device.password
        ):
            self.refusals += 1
            await _abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid device credentials",
                "INVALID_DEVICE_CREDENTIALS",
            )
            return
        if device.refuse_reason:
            self.refusals += 1
            await _abort(
                context,
                grpc.StatusCode.PERMISSION_DENIED,
                "device is disabled",
                device.refuse_reason,
            )
            return
        hello = await context.read()
        assert isinstance(hello, pb.DeviceFrame), "hello first"
        assert hello.HasField("hello"), "hello first"
        queue: asyncio.Queue[object] = asyncio.Queue()
        with self._lock:
            self._frames[device_id].append(hello)
            self._queues[device_id] = queue
            self.connects[device_id] += 1
        await context.write(
            pb.ServerFrame(
                welcome=pb.Welcome(
                    device_id=device_id,
                    settings=self.settings,
                    session_id=f"s{self.connects[device_id]}",
                )
            )
        )
        reader = asyncio.create_task(self._read(device_id, context, queue))
        try:
            while True:
                item = await queue.get()
                if item is _CLOSE:
                    return
                assert isinstance(item, pb.ServerFrame)
                await context.write(item)
                if item.HasField("reconnect"):
                    return
        finally:
            reader.cancel()
            with self._lock:
                if self._queues.get(device_id) is queue:
                    del self._queues[device_id]

    async def _read(
        self,
        device_id: str,
        context: grpc.aio.ServicerContext[Any, Any],
        queue: asyncio.Queue[object],
    ) -> None:
        while True:
            frame = await context.read()
            if frame is grpc.aio.EOF:
                queue.put_nowait(_CLOSE)
                return
            assert isinstance(frame, pb.DeviceFrame)
            with self._lock:
                self._frames[device_id].append(frame)
            kind = frame.WhichOneof("frame")
            if self.auto_ack_reports and kind in ("report", "inbound"):
                rid = frame.report.report_id if kind == "report" else frame.inbound.report_id
                queue.put_nowait(pb.ServerFrame(report_ack=pb.ReportAck(report_ids=[rid])))


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any], code: grpc.StatusCode, message: str, reason: str
) -> None:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="zimsend.v1"))
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    await context.abort(
        code, message, trailing_metadata=(("grpc-status-details-bin", status.SerializeToString()),)
    )


def wait_until(
    predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02
) -> None:
    """Poll `predicate` from a plain thread (for use inside trio.to_thread or asyncio tests)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)
