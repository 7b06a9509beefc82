"""What every public RPC shares: the server's state, authentication and error mapping.

Each public handler is written as

    @public_rpc
    async def SendSms(self, request, context, caller: Caller) -> SendSmsResponse: ...

and `public_rpc` authenticates the call first (SPEC.md §2: `x-api-key` + `x-client-id` on every
request), counts it against the client's limit (SPEC.md §8, `ratelimit.py`), then runs the
handler, and turns any `ApiError` into the documented gRPC status. An unexpected exception is
logged with its traceback on the server and reaches the caller only as `INTERNAL` with a
request-independent message: no stack trace, SQL or data leaks out. A full or unwritable
database is not unexpected: 503 UNAVAILABLE with Retry-After (`errors.known_error`).

Database work is synchronous SQLAlchemy (one storage layer for the asyncio server and the trio
worker, DESIGN.md); `ServerState.db_call` runs it on a small thread pool so the event loop never
waits on a disk or a network round trip.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import re
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

import grpc

from zimsend.server import logs
from zimsend.server.config import Settings
from zimsend.server.errors import ApiError, ErrorCode, abort, known_error
from zimsend.server.ratelimit import ClientRateLimiter
from zimsend.server.sending.intake import Intake
from zimsend.server.storage import Database, utcnow
from zimsend.server.verified_keys import VerifiedKeys

P = ParamSpec("P")
#: See `WorkSignal.announce`: twice the dispatcher's fallback poll interval.
ANNOUNCE_HORIZON = dt.timedelta(seconds=2)
T = TypeVar("T")
log = logs.get("zimsend.rpc")


class WorkSignal:
    """"There is new work for client X": the SMS service notifies, the dispatcher listens.

    In-process only (DESIGN "Dispatch": an in-process event on SQLite; PostgreSQL adds
    LISTEN/NOTIFY so other replicas hear it too). Callbacks must be quick and non-blocking.
    """

    def __init__(self) -> None:
        self._listeners: list[Callable[[str], None]] = []

    def subscribe(self, listener: Callable[[str], None]) -> None:
        self._listeners.append(listener)

    def notify(self, client_id: str) -> None:
        for listener in self._listeners:
            listener(client_id)

    def announce(self, client_id: str, due_at: dt.datetime | None) -> None:
        """`notify` for messages just queued that are due at `due_at` (None: nothing was
        queued). Messages due later than `ANNOUNCE_HORIZON` wake nobody: the dispatcher's
        periodic scan (at least once a second) finds them and sets its timer before they
        are due. Waking it for each far-future message cost a round per request."""
        if due_at is not None and due_at - utcnow() <= ANNOUNCE_HORIZON:
            self.notify(client_id)


@dataclass
class ServerState:
    """Process-wide state handed to every service: settings, database, pepper, and the
    components later issues add (the device hub, the dispatcher)."""

    settings: Settings
    db: Database
    pepper: bytes
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=8, thread_name_prefix="db")
    )
    #: The device link's own lane (dispatch rounds, report batches, heartbeat flushes): with
    #: one shared pool, a burst of API calls queued hundreds of jobs ahead of them, and work
    #: already accepted stopped flowing (`zimsend bench`, overload scenario).
    link_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(max_workers=2, thread_name_prefix="db-link")
    )
    new_work: WorkSignal = field(default_factory=WorkSignal)
    rate_limiter: ClientRateLimiter | None = None
    #: The accept lane: every send request of this process (`sending.intake`).
    intake: Intake = field(init=False)
    #: API keys verified in the last second (`auth`).
    verified_keys: VerifiedKeys = field(default_factory=VerifiedKeys)
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.intake = Intake(self.db, self.settings)
        if self.rate_limiter is None:
            self.rate_limiter = ClientRateLimiter(
                self.db, self.settings.rate_limit_per_minute, self.db_call
            )

    async def db_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run blocking database work off the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    async def link_call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`db_call` on the device link's lane (see `link_executor`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.link_executor, functools.partial(fn, *args, **kwargs)
        )


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    """First value of an incoming metadata key (names are lower-case in gRPC)."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


#: A caller's own X-Request-ID passes Envoy (`preserve_external_request_id`); it goes into logs
#: and the database, so only a short plain one is kept.
_PLAIN_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's request id: Envoy's `x-request-id` (REST and gRPC through the gateway), or a
    new one for a direct call or an unusable value. It follows the messages the call queues
    into every log line about them (docs/operations.md)."""
    value = metadata_value(context, "x-request-id")
    if value is not None and _PLAIN_REQUEST_ID.fullmatch(value):
        return value
    return str(uuid.uuid4())


Handler = Callable[..., Awaitable[Any]]


def public_rpc(handler: Handler) -> Handler:
    """Authenticate, count against the client's rate limit, run, and map errors for one
    public unary RPC (see module docstring)."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        headers: list[tuple[str, str]] = []
        try:
            caller, headers = await _admit(self.state, context)
            response = await handler(self, request, context, caller)
            await context.send_initial_metadata(tuple(headers))
            return response
        except Exception as exc:
            await _fail(context, exc, handler.__name__, headers)

    return wrapper


def public_stream_rpc(handler: Callable[..., Any]) -> Callable[..., Any]:
    """`public_rpc` for server-streaming RPCs: the handler is an async generator."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        headers: list[tuple[str, str]] = []
        sent = False
        try:
            caller, headers = await _admit(self.state, context)
            async for item in handler(self, request, context, caller):
                if not sent:
                    await context.send_initial_metadata(tuple(headers))
                    sent = True
                yield item
        except Exception as exc:
            await _fail(context, exc, handler.__name__, [] if sent else headers)

    return wrapper


async def _admit(
    state: ServerState, context: grpc.aio.ServicerContext
) -> tuple[Any, list[tuple[str, str]]]:
    """Authenticate the call and count it; returns the caller and the RateLimit headers."""
    from zimsend.server.auth import authenticate  # avoids an import cycle with auth

    caller = await authenticate(state, context)
    assert state.rate_limiter is not None
    return caller, (await state.rate_limiter.admit(caller.client_id)).headers()


async def _fail(
    context: grpc.aio.ServicerContext, exc: Exception, method: str,
    headers: list[tuple[str, str]],
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
