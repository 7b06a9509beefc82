"""What every public RPC shares: authentication, the rate limit and error mapping.

Each public handler is written as

    @public_rpc
    async def SendSms(self, request, context, caller: Caller) -> SendSmsResponse: ...

and `public_rpc` authenticates the call first (SPEC.md §2: `x-api-key` + `x-client-id` on every
request), counts it against the client's limit (SPEC.md §8, `ratelimit.py`), then runs the
handler, and turns any `ApiError` into the documented gRPC status. An unexpected exception is
logged with its traceback on the server and reaches the caller only as `INTERNAL` with a
request-independent message: no stack trace, SQL or data leaks out. A full or unwritable
database is not unexpected: 503 UNAVAILABLE with Retry-After (`errors.known_error`).
The servicers' `self.state` is the process's `state.ServerState`.

Where the RateLimit headers go (docs/decisions.md): a unary call's go as trailing metadata,
which travels with the status at no cost, where initial metadata sent apart costs grpc a batch
of its own per call; Envoy copies them into a REST answer's headers (HTTP/1.1 callers get no
trailers). A refusal (429) carries them with the error's other headers (`errors.abort`), a
streamed answer as initial metadata.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from zimsend.server import logs
from zimsend.server.auth import Caller, authenticate
from zimsend.server.errors import ApiError, ErrorCode, abort, known_error
from zimsend.server.state import ServerState

log = logs.get("zimsend.rpc")


Handler = Callable[..., Awaitable[Any]]
#: The RateLimit headers of an admitted call (`ratelimit.Admission.headers`).
Headers = tuple[tuple[str, str], ...]


def public_rpc(handler: Handler) -> Handler:
    """Authenticate, count against the client's rate limit, run, and map errors for one
    public unary RPC (see module docstring)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        headers: Headers = ()
        try:
            caller, headers = await _admit(self.state, context)
            response = await handler(self, request, context, caller)
            context.set_trailing_metadata(headers)
            return response
        except Exception as exc:
            await _fail(context, exc, handler.__name__, headers)

    return wrapper


def public_stream_rpc(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`public_rpc` for server-streaming RPCs: the handler is an async generator."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        headers: Headers = ()
        sent = False
        try:
            caller, headers = await _admit(self.state, context)
            async for item in handler(self, request, context, caller):
                if not sent:
                    await context.send_initial_metadata(headers)
                    sent = True
                yield item
        except Exception as exc:
            await _fail(context, exc, handler.__name__, () if sent else headers)

    return wrapper


async def _admit(
    state: ServerState, context: grpc.aio.ServicerContext[Any, Any]
) -> tuple[Caller, Headers]:
    """Authenticate the call and count it; returns the caller and the RateLimit headers."""
    caller = await authenticate(state, context)
    assert state.rate_limiter is not None
    return caller, (await state.rate_limiter.admit(caller.client_id)).headers()


async def _fail(
    context: grpc.aio.ServicerContext[Any, Any],
    exc: Exception,
    method: str,
    headers: Headers,
) -> None:
    """Turn a handler's exception into its gRPC status (never returns normally). A full or
    unwritable database is 503 UNAVAILABLE with Retry-After and no log line of its own
    (`storage.availability` logs the condition once)."""
    known = known_error(exc)
    if known is not None:
        await abort(context, known, headers)
    if _is_abort(exc):
        raise exc
    log.error("rpc.unexpected_error", method=method, exc_info=exc)
    await abort(context, ApiError(ErrorCode.INTERNAL, "Internal error; it was logged."))


def _is_abort(exc: BaseException) -> bool:
    # grpc.aio raises AbortError out of context.abort(); it must propagate untouched.
    return type(exc).__name__ == "AbortError"
