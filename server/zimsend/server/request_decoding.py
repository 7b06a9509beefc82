"""Requests that are not valid protobuf get INVALID_ARGUMENT, not grpc's UNKNOWN.

grpc.aio decodes a request before any handler runs, and when that fails it answers UNKNOWN
"Unexpected <class 'google.protobuf.message.DecodeError'>: …": the wrong code (the caller sent
a bad request, nothing unknown happened) and internal class names in the message. This
interceptor gives every method a deserializer that does not raise: bytes that do not parse
become `UNDECODABLE`, which the method's wrapper answers INVALID_REQUEST through the one error
helper (`errors.abort`). In a client stream the first undecodable frame ends the call the
same way; the frames before it were handled as usual.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from zimsend.server.errors import ApiError, ErrorCode, abort
from zimsend.server.method_handlers import (
    Continuation,
    Handler,
    Req,
    Resp,
    awaitable_behavior,
    with_behavior,
)

Deserializer = Callable[[bytes], Any]


class _Undecodable:
    """Stands for a request message whose bytes did not parse."""

    __slots__ = ()


UNDECODABLE = _Undecodable()


class RequestDecoding(grpc.aio.ServerInterceptor):
    """Install with `grpc.aio.server(interceptors=[RequestDecoding(), …])`."""

    def __init__(self) -> None:
        # Per method: (the service's handler, the guarded one). Built once per method.
        self._guarded: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Continuation[Req, Resp],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Req, Resp] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.request_deserializer is None:
            return handler
        method: str = handler_call_details.method
        cached = self._guarded.get(method)
        if cached is None or cached[0] is not handler:
            cached = (handler, _guard(handler))
            self._guarded[method] = cached
        return cached[1]


def _guard(handler: Handler) -> Handler:
    deserialize = handler.request_deserializer
    if deserialize is None:  # the caller passes only handlers that decode their requests
        return handler
    error = ApiError(
        ErrorCode.INVALID_REQUEST,
        f"The request is not a valid {_message_name(deserialize)} message (protobuf).",
    )

    def tolerant(data: bytes) -> Any:
        try:
            return deserialize(data)
        except DecodeError:
            return UNDECODABLE

    kind, behavior = next(
        (name, getattr(handler, name))
        for name in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, name) is not None
    )
    if kind.startswith("unary_"):
        guarded = _unary_request(behavior, error)
    else:
        guarded = _request_stream(behavior, error)
    return with_behavior(handler, request_deserializer=tolerant, **{kind: guarded})


def _unary_request(behavior: Callable[..., Any], error: ApiError) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def streaming(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            if request is UNDECODABLE:
                await abort(context, error)
            async for item in behavior(request, context):
                yield item

        return streaming

    call = awaitable_behavior(behavior)

    async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if request is UNDECODABLE:
            await abort(context, error)
        return await call(request, context)

    return unary


def _request_stream(behavior: Callable[..., Any], error: ApiError) -> Callable[..., Any]:
    async def checked(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        async for request in requests:
            if request is UNDECODABLE:
                await abort(context, error)
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def streaming(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            async for item in behavior(checked(requests, context), context):
                yield item

        return streaming

    async def call(
        requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        result = behavior(checked(requests, context), context)
        return await result if inspect.isawaitable(result) else result

    return call


def _message_name(deserialize: Deserializer) -> str:
    """`zimsend.v1.SendSmsRequest` for `SendSmsRequest.FromString`; "request" otherwise."""
    message_class = getattr(deserialize, "__self__", None)
    descriptor = getattr(message_class, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")
