"""The server's front door for a graceful stop: refuse new calls, count the ones in flight.

Why: stopping used to drop the phones first (so that they reconnect elsewhere) while calls
kept arriving, and a send accepted in that moment found no phone online and got 503
NO_DEVICE_AVAILABLE — a wrong answer the caller cannot act on. With the gate, `stop()` first
closes it (every new call is answered UNAVAILABLE "shutting down" with a retry delay, in the
JSON envelope through Envoy), waits for the calls already running to finish, and only then
tells the phones to reconnect. Before the gRPC server itself stops, `quiet()` waits until
callers stop coming (Envoy routes elsewhere once health says NOT_SERVING): calls reaching
grpc's own stop were cancelled, and REST callers saw 499 CANCELLED instead of the envelope.

Counted: unary calls and server streams (requests a client waits on). Not counted: phones'
bidi streams (they last for hours; the device hub ends them) and the health service, which
keeps answering (NOT_SERVING) so that Envoy stops routing here.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from zimsend.server.errors import ERROR_CODE_HEADER, ERROR_DOMAIN, ErrorCode, reason_name
from zimsend.server.method_handlers import (
    Behavior,
    Continuation,
    Handler,
    Req,
    Resp,
    awaitable_behavior,
    with_behavior,
)

SHUTTING_DOWN_MESSAGE = "The server is shutting down; retry in a moment."
#: Seconds a refused caller is told to wait (RetryInfo and Retry-After): a replica behind the
#: same Envoy answers at once, a restarted `zimsend up` server within a few seconds.
RETRY_AFTER_SECONDS = 1
_UNGATED_PREFIXES = ("/grpc.health.v1.Health/",)
_REASON = reason_name(ErrorCode.UNAVAILABLE)


class CallGate(grpc.aio.ServerInterceptor):
    """Install with `grpc.aio.server(interceptors=[gate])`; `close()` then `await drained()`."""

    def __init__(self) -> None:
        self.closed = False
        self.in_flight = 0
        self._last_refusal = 0.0  # monotonic time; only kept once closed
        self._idle = asyncio.Event()
        self._idle.set()
        # Per method: (the service's handler, the counting handler built for it). Built once,
        # so an open gate costs a dict lookup and two counter updates per call.
        self._counting: dict[str, tuple[Handler, Handler]] = {}

    def close(self) -> None:
        """From now on every new call (but health checks) is refused."""
        self.closed = True
        self._last_refusal = time.monotonic()

    async def drained(self, timeout: float) -> bool:  # noqa: ASYNC109 - the deadline is part of this call's contract
        """Wait until no counted call runs (at most `timeout` s); True when none does."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def quiet(self, period: float, timeout: float) -> bool:  # noqa: ASYNC109 - the deadline is part of this call's contract
        """Wait until no client call was refused for `period` s (at most `timeout` s in
        all): the gateway has stopped sending calls here. True when it did within `timeout`."""
        deadline = time.monotonic() + timeout
        while (silent_for := time.monotonic() - self._last_refusal) < period:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            await asyncio.sleep(min(period - silent_for, left))
        return True

    async def intercept_service(
        self,
        continuation: Continuation[Req, Resp],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_UNGATED_PREFIXES):
            return handler
        if self.closed:
            if handler.unary_unary is not None or handler.unary_stream is not None:
                # Phones retrying their stream do not count: they take any refusal in stride.
                self._last_refusal = time.monotonic()
            return _refusing(handler)
        cached = self._counting.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, self._counted(handler))
            self._counting[method] = cached
        return cached[1]

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()

    def _counted(self, handler: Handler) -> Handler:
        if handler.unary_unary is not None:
            unary = awaitable_behavior(handler.unary_unary)

            async def counted_unary(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> Any:
                self._enter()
                try:
                    return await unary(request, context)
                finally:
                    self._leave()

            return with_behavior(handler, unary_unary=counted_unary)
        if handler.unary_stream is not None and inspect.isasyncgenfunction(handler.unary_stream):
            stream: Behavior = handler.unary_stream

            async def counted_stream(
                request: Any, context: grpc.aio.ServicerContext[Any, Any]
            ) -> AsyncIterator[Any]:
                self._enter()
                try:
                    async for item in stream(request, context):
                        yield item
                finally:
                    self._leave()

            return with_behavior(handler, unary_stream=counted_stream)
        return handler  # phones' streams (and any other kind) are not waited for


def _refusing(handler: Handler) -> Handler:
    """A handler of the same kind as `handler` that answers "shutting down"."""
    kind = next(
        name
        for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, name) is not None
    )
    return with_behavior(handler, **{kind: _refuse})


async def _refuse(_request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
    """UNAVAILABLE with the ErrorInfo and RetryInfo every ZimSend error carries; the
    `zimsend-error-code` and `retry-after` headers make the REST envelope and Retry-After."""
    status = status_pb2.Status(
        code=code_pb2.UNAVAILABLE,
        message=SHUTTING_DOWN_MESSAGE,
        details=[
            _packed(error_details_pb2.ErrorInfo(reason=_REASON, domain=ERROR_DOMAIN)),
            _packed(
                error_details_pb2.RetryInfo(
                    retry_delay=duration_pb2.Duration(seconds=RETRY_AFTER_SECONDS)
                )
            ),
        ],
    )
    try:
        await context.send_initial_metadata(
            ((ERROR_CODE_HEADER, _REASON), ("retry-after", str(RETRY_AFTER_SECONDS)))
        )
    except Exception:  # noqa: BLE001 - metadata already sent: the status still goes
        pass
    await context.abort_with_status(rpc_status.to_status(status))


def _packed(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed
