"""One DeviceLink stream, bridged from grpcio's sync API into trio.

Why sync grpcio in threads: grpcio's async API exists only on asyncio, and the agent is a trio
program (DESIGN.md, "one process, one model"). Each stream uses two threads:

- the *request* thread is the one grpcio itself starts to consume our request iterator; the
  iterator blocks in `trio.from_thread.run(receive)` on a trio memory channel, so trio tasks
  simply `await link.send(frame)`;
- the *response* thread is a `trio.to_thread` worker that iterates the call and pushes each
  ServerFrame into another memory channel (with back-pressure), so trio tasks
  `await link.receive()`.

Response threads run under a dedicated `trio.CapacityLimiter` passed in by the caller: trio's
default limiter has 40 tokens and would silently stall the 41st stream of a process that holds
many (tests, a multi-device agent).

Cancellation: leaving `open_link` (normally, by error or by cancellation) closes the request
channel (the request iterator returns), cancels the call (the response thread's iteration raises
and the thread ends; it is abandoned, so trio never waits for it) and closes the channel.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager

import grpc
import trio

from zimsend.agent.channel import KEEPALIVE_OPTIONS
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import device_link_pb2_grpc as pb_grpc

__all__ = ["Link", "LinkClosed", "make_channel", "open_link"]


class LinkClosed(Exception):
    """The server ended the stream without an error status."""


class Link:
    """An open stream: `send` DeviceFrames up, `receive` ServerFrames down."""

    def __init__(
        self,
        outgoing: trio.MemorySendChannel[pb.DeviceFrame],
        incoming: trio.MemoryReceiveChannel[pb.ServerFrame],
    ) -> None:
        self._outgoing = outgoing
        self._incoming = incoming

    async def send(self, frame: pb.DeviceFrame) -> None:
        """Queue a frame for the server (waits only when the buffer is full)."""
        await self._outgoing.send(frame)

    async def receive(self) -> pb.ServerFrame:
        """The next ServerFrame; LinkClosed when the server ended the stream cleanly.
        A gRPC error status is raised by `open_link`'s nursery as `grpc.RpcError`."""
        try:
            return await self._incoming.receive()
        except trio.EndOfChannel:
            raise LinkClosed("the server closed the stream") from None


def make_channel(target: str, credentials: grpc.ChannelCredentials | None = None) -> grpc.Channel:
    """A sync channel with the phone keepalive settings (TLS when `credentials` is given)."""
    options = list(KEEPALIVE_OPTIONS)
    if credentials is not None:
        return grpc.secure_channel(target, credentials, options=options)
    return grpc.insecure_channel(target, options=options)


@asynccontextmanager
async def open_link(
    target: str,
    metadata: Sequence[tuple[str, str]],
    *,
    limiter: trio.CapacityLimiter,
    credentials: grpc.ChannelCredentials | None = None,
    buffer: int = 64,
) -> AsyncIterator[Link]:
    """Open DeviceLinkService.Connect on a fresh channel and yield its Link.

    A fresh channel per attempt keeps grpcio's own reconnect logic out of the way: the caller's
    backoff decides when to try again. Errors of the call (`grpc.RpcError`) surface from this
    context manager.
    """
    channel = make_channel(target, credentials)
    out_send, out_recv = trio.open_memory_channel[pb.DeviceFrame](buffer)
    in_send, in_recv = trio.open_memory_channel[pb.ServerFrame](buffer)
    token = trio.lowlevel.current_trio_token()
    stub = pb_grpc.DeviceLinkServiceStub(channel)
    call = stub.Connect(_requests(out_recv, token), metadata=tuple(metadata))
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump_responses, call, in_send, limiter)
            yield Link(out_send, in_recv)
            nursery.cancel_scope.cancel()
    finally:
        out_send.close()
        call.cancel()
        channel.close()


def _requests(
    outgoing: trio.MemoryReceiveChannel[pb.DeviceFrame], token: trio.lowlevel.TrioToken
) -> Iterator[pb.DeviceFrame]:
    """The request iterator grpcio consumes in its own thread."""
    while True:
        try:
            frame = trio.from_thread.run(outgoing.receive, trio_token=token)
        except BaseException:  # noqa: BLE001 — EndOfChannel, Closed…, RunFinishedError, Cancelled
            return
        yield frame


async def _pump_responses(
    call: grpc._CallIterator[pb.ServerFrame],  # the stubs' type of a response-streaming call
    incoming: trio.MemorySendChannel[pb.ServerFrame],
    limiter: trio.CapacityLimiter,
) -> None:
    def read() -> None:
        for frame in call:  # a response-streaming call is an iterator of ServerFrames
            try:
                trio.from_thread.run(incoming.send, frame)
            except BaseException:  # noqa: BLE001 — the trio side is gone (closed, cancelled…)
                return

    try:
        await trio.to_thread.run_sync(read, limiter=limiter, abandon_on_cancel=True)
    finally:
        call.cancel()
    # Only a clean end of the stream closes the channel (the reader then sees LinkClosed); an
    # error status propagates from here instead, so it is never mistaken for a clean close.
    await incoming.aclose()
