"""The connection supervisor: connect, run a session, decide whether and when to try again.

- Transient failures (server down, network lost, stream reset, a clean close, no Welcome in
  time) → reconnect after a full-jitter exponential backoff, capped; a connection that stayed
  healthy resets the backoff.
- Busy server (UNAVAILABLE with a RetryInfo delay: too many phones connecting at once) → wait
  the delay it gave (plus a little jitter) instead of the backoff: the server spreads the
  phones it turns away over the time it needs to welcome them.
- Reconnect frame → wait at least `retry_after_ms` (plus jitter, so a restarting server is not
  hit by every phone at the same millisecond), then reconnect; DEVICE_DELETED,
  DEVICE_DISABLED, PASSWORD_ROTATED and REPLACED stop the agent instead: reconnecting cannot
  help (REPLACED: another agent uses the same credentials, see refusal.FATAL_RECONNECT).
- Refusal (UNAUTHENTICATED / PERMISSION_DENIED) → stop with a clear message and a non-zero
  exit code: a wrong password will not fix itself, and hammering the server helps no one.

Cancellation: cancelling `supervise` closes the current stream (see link.py) and returns.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
import trio

from zimsend.agent.backoff import Backoff
from zimsend.agent.link import Link, LinkClosed, open_link
from zimsend.agent.refusal import FATAL_RECONNECT, refusal_of, retry_delay
from zimsend.agent.session import ProtocolError, ReconnectRequested
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["EXIT_REFUSED", "EXIT_STOPPED", "AgentStopped", "ConnectionTarget", "supervise"]

log = logging.getLogger("zimsend.agent")

#: Exit code when the server refuses the credentials.
EXIT_REFUSED = 3
#: Exit code when the server tells the device to stop (deleted, disabled, password rotated).
EXIT_STOPPED = 4
#: A connection that lived this long after Welcome resets the backoff.
HEALTHY_AFTER_S = 10.0

_TRANSIENT = (grpc.RpcError, LinkClosed, ProtocolError, ReconnectRequested, trio.TooSlowError)


class AgentStopped(Exception):
    """The agent must stop; `str()` is the message for the user."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class ConnectionTarget:
    """Where and as whom to connect. The password is kept out of `repr()`."""

    server: str
    metadata: tuple[tuple[str, str], ...]
    credentials: grpc.ChannelCredentials | None = None

    def __repr__(self) -> str:
        return f"ConnectionTarget(server={self.server!r}, tls={self.credentials is not None})"


async def supervise(
    target: ConnectionTarget,
    run_session: Callable[[Link, Callable[[pb.Welcome], None]], Awaitable[None]],
    *,
    limiter: trio.CapacityLimiter,
    backoff: Backoff | None = None,
) -> None:
    """Keep a session running forever; raise AgentStopped when the server says stop."""
    backoff = backoff or Backoff()
    while True:
        welcomed_at: float | None = None

        def on_welcome(welcome: pb.Welcome) -> None:
            nonlocal welcomed_at
            welcomed_at = trio.current_time()
            log.info(
                "connected to %s as %s (session %s)",
                target.server,
                welcome.device_id,
                welcome.session_id or "-",
            )

        minimum = 0.0
        try:
            async with open_link(
                target.server, target.metadata, limiter=limiter, credentials=target.credentials
            ) as link:
                await run_session(link, on_welcome)
        except BaseException as exc:  # classified below; the rest is re-raised
            cause = _cause(exc)
            if cause is None:
                raise
        else:  # pragma: no cover - run_session only ends by raising
            cause = LinkClosed("session ended")
        if isinstance(cause, grpc.RpcError) and (refusal := refusal_of(cause)) is not None:
            log.error("%s", refusal)
            raise AgentStopped(str(refusal), EXIT_REFUSED)
        if isinstance(cause, grpc.RpcError) and (asked := retry_delay(cause)) is not None:
            delay = backoff.honour(asked)
            log.warning("server busy (%s); reconnecting in %.1fs as asked", _describe(cause), delay)
            await trio.sleep(delay)
            continue
        if isinstance(cause, ReconnectRequested):
            if cause.reason in FATAL_RECONNECT:
                message = f"stopped by the server: {FATAL_RECONNECT[cause.reason]}"
                log.error("%s", message)
                raise AgentStopped(message, EXIT_STOPPED)
            minimum = max(0, cause.retry_after_ms) / 1000
        healthy = welcomed_at is not None and (
            isinstance(cause, ReconnectRequested)
            or trio.current_time() - welcomed_at >= HEALTHY_AFTER_S
        )
        if healthy:
            backoff.reset()
        delay = minimum + backoff.next()
        log.warning("%s; reconnecting in %.1fs", _describe(cause), delay)
        await trio.sleep(delay)


def _cause(exc: BaseException) -> BaseException | None:
    """The transient failure inside `exc` (unwrapping exception groups), or None when `exc`
    must propagate (cancellation, KeyboardInterrupt, a bug)."""
    leaves = list(_leaves(exc))
    if any(not isinstance(e, (*_TRANSIENT, trio.Cancelled)) for e in leaves):
        return None
    for kind in (grpc.RpcError, ReconnectRequested, ProtocolError, trio.TooSlowError, LinkClosed):
        for leaf in leaves:
            if isinstance(leaf, kind):
                return leaf
    return None  # only Cancelled: we are being cancelled


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _is_call(error: grpc.RpcError) -> bool:
    """A call's error is also its `grpc.Call` at run time; the stubs say the two cannot meet."""
    return isinstance(error, grpc.Call)


def _describe(cause: BaseException) -> str:
    if isinstance(cause, grpc.RpcError) and _is_call(cause):
        return f"link lost: {cause.code().name} {cause.details() or ''}".rstrip()
    if isinstance(cause, trio.TooSlowError):
        return "no Welcome from the server in time"
    return str(cause) or type(cause).__name__
