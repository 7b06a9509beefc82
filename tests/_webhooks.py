"""Helpers shared by the webhook and worker tests (fixtures stay in the test modules, so the
shared conftest.py is not a point of contention)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Callable, Iterable
from typing import Any

import httpcore
import trio

from zimsend.server import webhook_endpoints
from zimsend.server.accounts.credentials import new_id
from zimsend.server.storage import Client, Database, OutboxEvent, WebhookDelivery

PEPPER = b"test-pepper-not-secret-0123456789"


def seed_client(db: Database, client_id: str | None = None) -> str:
    client_id = client_id or new_id("client")
    with db.write() as s:
        s.add(Client(id=client_id, name=client_id))
    return client_id


def add_endpoint(
    db: Database, client_id: str, url: str, events: list[str] | None = None, secret: str = ""
) -> webhook_endpoints.NewEndpoint:
    return webhook_endpoints.configure(
        db,
        PEPPER,
        client_id,
        url=url,
        events=events or ["sms.sent", "sms.delivered"],
        secret=secret,
        allow_insecure=True,
    )


def add_event(
    db: Database,
    client_id: str,
    event_type: str = "sms.sent",
    *,
    webhook_url: str | None = None,
    data: dict[str, Any] | None = None,
    at: dt.datetime | None = None,
) -> str:
    """An outbox row exactly as the producers write one (devicelink.transitions.write_event)."""
    from zimsend.server.devicelink.transitions import write_event

    when = at or dt.datetime.now(dt.UTC)
    with db.write() as s:
        event = write_event(
            s,
            client_id,
            event_type,
            data or {"message_id": new_id("msg"), "status": "sent"},
            webhook_url=webhook_url,
            now=when,
        )
    return event.id


def deliveries(db: Database, event_id: str | None = None) -> list[WebhookDelivery]:
    from sqlmodel import col, select

    with db.session() as s:
        query = select(WebhookDelivery).order_by(col(WebhookDelivery.id))
        if event_id:
            query = query.where(WebhookDelivery.event_id == event_id)
        return list(s.exec(query))


def event_row(db: Database, event_id: str) -> OutboxEvent:
    with db.session() as s:
        row = s.get(OutboxEvent, event_id)
        assert row is not None
        return row


# --- stubs: a resolver that answers from a table, a connector that records -----------------


class StubResolver:
    def __init__(self, table: dict[str, list[str]] | Callable[[str, int], list[str]]) -> None:
        self.table = table
        self.calls: list[str] = []

    async def resolve(self, host: str, port: int) -> list[Any]:
        self.calls.append(host)
        answer = self.table(host, port) if callable(self.table) else self.table[host]
        return [ipaddress.ip_address(a) for a in answer]


class RecordingStream(httpcore.AsyncNetworkStream):
    """Pretends to be a server: records TLS and what was written, answers `response`."""

    def __init__(self, recorder: RecordingConnector, response: bytes, hang: bool) -> None:
        self.recorder = recorder
        # One request per connection: the pool must not reuse a stream that has hit EOF.
        self.response = response.replace(b"\r\n", b"\r\nConnection: close\r\n", 1)
        self.hang = hang
        self._sent = False

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109 - httpcore's network backend interface names it so
        self.recorder.written += buffer

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109 - httpcore's network backend interface names it so
        if self.hang:
            await trio.sleep_forever()
        if self._sent:
            return b""
        self._sent = True
        return self.response

    async def aclose(self) -> None:
        pass

    # httpcore's network backend interface names the `timeout` parameter (ASYNC109).
    async def start_tls(
        self,
        ssl_context: Any,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        self.recorder.tls_server_names.append(server_hostname)
        return self

    def get_extra_info(self, info: str) -> Any:
        return None


OK_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


class RecordingConnector(httpcore.AsyncNetworkBackend):
    """Records every connect instead of opening a socket. The "server" answers `response`, or
    `responses[address]` for that address; an address in `hang` never answers."""

    def __init__(
        self,
        response: bytes = OK_RESPONSE,
        *,
        responses: dict[str, bytes] | None = None,
        hang: set[str] | None = None,
    ) -> None:
        self.connects: list[tuple[str, int]] = []
        self.tls_server_names: list[str | None] = []
        self.written = b""
        self.response = response
        self.responses = responses or {}
        self.hang = hang or set()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's network backend interface names it so
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        return RecordingStream(self, self.responses.get(host, self.response), host in self.hang)

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)
