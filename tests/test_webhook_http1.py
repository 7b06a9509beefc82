"""The webhook POST's keep-alive HTTP/1.1 client (webhook_delivery/http1.py) against real
sockets: a trio server on loopback that answers as a customer's receiver might.

What a user relies on: a steady stream of events to one receiver reuses one connection (the
receiver is not hit by a new TCP/TLS handshake per event); a receiver that closes an idle
connection, answers chunked, or sends a huge body still gets its events, and its status line
alone decides; a connection whose exchange did not end cleanly is never reused; over HTTPS the
URL's host name is the one sent for SNI and checked in the certificate, and a certificate that
is not trusted gets nothing sent.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio
from _certs import self_signed

from zimsend.server.webhook_delivery.sender import AttemptOutcome, WebhookSender
from zimsend.server.webhook_delivery.transport import guarded_pools

SECRET = "whsec_" + "A" * 43 + "="
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

Answer = Callable[[trio.abc.Stream, int], Awaitable[bool]]


class Server:
    """Counts connections and requests; `answer(stream, n)` replies to request n (1-based,
    over all connections) and says whether to keep the connection open."""

    def __init__(self, answer: Answer, tls: ssl.SSLContext | None = None) -> None:
        self.answer = answer
        self.tls = tls
        self.connections = 0
        self.requests: list[bytes] = []
        self.port = 0

    async def handle(self, raw: trio.SocketStream) -> None:
        self.connections += 1
        stream: trio.abc.Stream = raw
        if self.tls is not None:
            stream = trio.SSLStream(raw, self.tls, server_side=True, https_compatible=True)
        buffer = b""
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                while len(buffer) < length:
                    buffer += await stream.receive_some(65536)
                self.requests.append(head + b"\r\n\r\n" + buffer[:length])
                buffer = buffer[length:]
                if not await self.answer(stream, len(self.requests)):
                    return
        except trio.BrokenResourceError:
            return
        finally:
            with trio.move_on_after(1):
                await stream.aclose()

    async def post_all(
        self,
        count: int,
        *,
        pause: float = 0,
        scheme: str = "http",
        host: str = "127.0.0.1",
        verify: ssl.SSLContext | bool = True,
    ) -> list[AttemptOutcome]:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, self.handle, 0, host="127.0.0.1")
            )
            self.port = listeners[0].socket.getsockname()[1]
            pools = guarded_pools(per_origin=4, allow_private=True, verify=verify)
            outcomes = []
            async with WebhookSender(timeout=5, allow_insecure=True, transport=pools) as sender:
                for n in range(count):
                    outcomes.append(
                        await sender.post(
                            f"{scheme}://{host}:{self.port}/hooks?n={n}",
                            secret=SECRET,
                            event_id=f"evt_{n:016x}",
                            body=b'{"n":%d}' % n,
                        )
                    )
                    await trio.sleep(pause)
            nursery.cancel_scope.cancel()
        return outcomes


async def ok(stream: trio.abc.Stream, n: int) -> bool:
    await stream.send_all(OK)
    return True


def test_sequential_posts_share_one_keep_alive_connection() -> None:
    server = Server(ok)
    outcomes = trio.run(server.post_all, 5)
    assert [o.status for o in outcomes] == [200] * 5
    assert all(o.success for o in outcomes)
    assert server.connections == 1
    first = server.requests[0]
    assert first.startswith(b"POST /hooks?n=0 HTTP/1.1\r\n")
    assert f"\r\nHost: 127.0.0.1:{server.port}\r\n".encode() in first
    for header in (
        b"X-Webhook-Signature: ",
        b"webhook-id: evt_0000000000000000",
        b"webhook-signature: v1,",
        b"Content-Type: application/json",
    ):
        assert header in first
    assert first.endswith(b'\r\n\r\n{"n":0}')


def test_a_connection_the_receiver_closed_while_idle_is_not_reused() -> None:
    async def close_after(stream: trio.abc.Stream, n: int) -> bool:
        await stream.send_all(OK)  # no "Connection: close": the client only finds out later
        return False

    server = Server(close_after)
    outcomes = trio.run(lambda: server.post_all(3, pause=0.05))
    assert all(o.success for o in outcomes), outcomes
    assert server.connections == 3


def test_chunked_and_huge_answers_are_judged_by_their_status_line() -> None:
    async def varied(stream: trio.abc.Stream, n: int) -> bool:
        if n == 1:
            await stream.send_all(
                b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
            )
            return True
        if n == 2:  # 1 MiB promised: the client reads 64 KiB and drops the connection
            await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
            try:
                for _ in range(16):
                    await stream.send_all(b"x" * 65536)
            except trio.BrokenResourceError:
                pass
            return False
        await stream.send_all(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        return True

    server = Server(varied)
    outcomes = trio.run(server.post_all, 3)
    assert [(o.success, o.status) for o in outcomes] == [(True, 201), (True, 200), (False, 500)]
    assert "HTTP 500" in (outcomes[2].error or "")
    assert server.connections == 2  # the chunked one was reused; the huge one was not


def test_a_receiver_that_hangs_up_without_answering_is_a_failure() -> None:
    async def hang_up(stream: trio.abc.Stream, n: int) -> bool:
        return False

    server = Server(hang_up)
    outcomes = trio.run(server.post_all, 2)
    assert all(not o.success and o.status is None for o in outcomes)
    assert all("invalid HTTP response" in (o.error or "") for o in outcomes), outcomes
    assert server.connections == 2


def tls_server(tmp_path: Path) -> tuple[Server, ssl.SSLContext, list[str | None]]:
    """A TLS receiver for `localhost` (a throwaway certificate), the context that trusts it,
    and the server names (SNI) its clients asked for."""
    cert, key = self_signed(tmp_path)
    names: list[str | None] = []
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(cert, key)
    server_side.sni_callback = lambda _sock, name, _ctx: names.append(name)
    return Server(ok, tls=server_side), ssl.create_default_context(cafile=str(cert)), names


def test_https_keeps_the_host_name_for_sni_and_certificate_and_reuses_the_connection(
    tmp_path: Path,
) -> None:
    server, trusting, names = tls_server(tmp_path)
    outcomes = trio.run(
        functools.partial(server.post_all, 3, scheme="https", host="localhost", verify=trusting)
    )
    assert [o.status for o in outcomes] == [200] * 3, outcomes
    assert names == ["localhost"]  # one handshake, for the URL's host name
    assert server.connections == 1
    assert f"\r\nHost: localhost:{server.port}\r\n".encode() in server.requests[0]


def test_https_to_a_certificate_nobody_vouches_for_is_refused(tmp_path: Path) -> None:
    server, _trusting, _names = tls_server(tmp_path)
    outcomes = trio.run(functools.partial(server.post_all, 1, scheme="https", host="localhost"))
    assert not outcomes[0].success
    assert outcomes[0].status is None
    assert "connection failed" in (outcomes[0].error or ""), outcomes
    assert server.requests == []  # nothing was sent over the unverified connection
