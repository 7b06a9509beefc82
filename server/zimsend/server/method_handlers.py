"""A gRPC method handler with one behaviour replaced: what the server's interceptors
(`metrics`, `call_gate`, `request_decoding`) each do to the handler they wrap.

grpc's handlers are named tuples at run time (`grpc._utilities.RpcMethodHandler`); its type
stubs declare only the abstract `grpc.RpcMethodHandler`, without `_replace`. This function is
the one place that relies on it.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import grpc

#: Any method's handler, as the interceptors keep and build them.
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
#: A handler's behaviour as the interceptors call it. The stubs type `unary_unary` & co. for
#: the synchronous server (`grpc.ServicerContext`, iterators); under grpc.aio they take an
#: aio context and may be coroutines or async generators.
Behavior: TypeAlias = Callable[..., Any]
#: `ServerInterceptor.intercept_service` is generic in the request and response types.
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Continuation: TypeAlias = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Req, Resp] | None"]
]


def with_behavior(
    handler: grpc.RpcMethodHandler[Any, Any], **behavior: Any
) -> grpc.RpcMethodHandler[Any, Any]:
    """`handler` with the given fields (`unary_unary=...`, `stream_stream=...`) replaced."""
    replaced: grpc.RpcMethodHandler[Any, Any] = handler._replace(**behavior)  # type: ignore[attr-defined]  # a namedtuple at run time
    return replaced


def awaitable_behavior(behavior: Behavior) -> Callable[..., Awaitable[Any]]:
    """`behavior` as a function whose result is always awaited: itself when it is a coroutine
    function (every servicer method and interceptor wrapper of this server), so that the
    interceptors' per-call wrappers need no `inspect.isawaitable` on each call."""
    if inspect.iscoroutinefunction(behavior):
        return behavior

    async def awaited(*args: Any) -> Any:
        result = behavior(*args)
        return await result if inspect.isawaitable(result) else result

    return awaited
