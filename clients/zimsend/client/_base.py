"""What `ZimSend` and `AsyncZimSend` share: their constructor's work (`ClientBase`),
credentials, the request each `Call` becomes, and the export's completion check."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from ._calls import Call
from ._errors import ZimSendError
from ._grpc import target_of
from ._retry import Retries
from ._transport import AsyncTransport, Request, Transport

__all__ = ["DEFAULT_BASE_URL", "DEFAULT_TIMEOUT", "ClientBase", "Credentials", "ExportCheck"]

DEFAULT_BASE_URL = "http://127.0.0.1:8080"
DEFAULT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Credentials:
    api_key: str
    client_id: str
    base_url: str
    device_id: str | None

    @classmethod
    def resolve(
        cls, api_key: str | None, client_id: str | None, base_url: str | None, device_id: str | None
    ) -> Credentials:
        """Arguments first, then ZIMSEND_API_KEY / ZIMSEND_CLIENT_ID / ZIMSEND_BASE_URL."""
        api_key = api_key or os.environ.get("ZIMSEND_API_KEY")
        client_id = client_id or os.environ.get("ZIMSEND_CLIENT_ID")
        base_url = base_url or os.environ.get("ZIMSEND_BASE_URL") or DEFAULT_BASE_URL
        missing = [
            name for name, value in (("api_key", api_key), ("client_id", client_id)) if not value
        ]
        if missing:
            raise ValueError(
                f"ZimSend needs {' and '.join(missing)} (arguments, or the "
                "ZIMSEND_API_KEY / ZIMSEND_CLIENT_ID environment variables)"
            )
        assert api_key
        assert client_id
        return cls(api_key, client_id, base_url, device_id)

    def request(self, call: Call[Any], key: str | None, timeout: float | None) -> Request:
        headers = {"x-api-key": self.api_key, "x-client-id": self.client_id}
        device = call.device_id or (self.device_id if call.operation.keyed else None)
        if device:
            headers["x-device-id"] = device
        if key:
            headers["idempotency-key"] = key
        return Request(call.operation, call.fields, headers, timeout)


TransportT = TypeVar("TransportT", Transport, AsyncTransport)


class ClientBase(Generic[TransportT]):
    """The arguments both clients take, resolved once: the credentials (arguments, then the
    environment), the per-attempt timeout, the retry policy (an int is `max_retries`) and the
    transport (`"rest"`, `"grpc"` to the same host and port, or one given). Each client keeps
    its own explicit signature, typed with its kind of transport."""

    def __init__(
        self,
        api_key: str | None,
        client_id: str | None,
        base_url: str | None,
        *,
        device_id: str | None,
        timeout: float,
        retries: Retries | int,
        transport: TransportT | str,
        rest: Callable[[str], TransportT],
        grpc: Callable[..., TransportT],
        kind: str,
    ) -> None:
        self._credentials = Credentials.resolve(api_key, client_id, base_url, device_id)
        self._timeout = timeout
        self._retries = Retries(max_retries=retries) if isinstance(retries, int) else retries
        if transport == "rest":
            transport = rest(self._credentials.base_url)
        elif transport == "grpc":
            target, tls = target_of(self._credentials.base_url)
            transport = grpc(target, tls=tls)
        elif isinstance(transport, str):
            raise ValueError(f"transport must be 'rest', 'grpc' or {kind}, not {transport!r}")
        self._transport: TransportT = transport

    @property
    def client_id(self) -> str:
        return self._credentials.client_id


def idempotency_key(call: Call[Any]) -> str | None:
    """The caller's key, or a fresh one for keyed operations: made once per call, reused by
    every retry of it."""
    if call.idempotency_key:
        return call.idempotency_key
    return f"zs-{uuid.uuid4().hex}" if call.operation.keyed else None


class ExportCheck:
    """Watches an export's bytes for the server's completion line (`# end of export: N
    messages` / `{"end_of_export":true,...}`): a stream cut before it is an error, not a
    shorter file (docs/decisions.md)."""

    MARKERS = (b"# end of export:", b'{"end_of_export":true')

    def __init__(self) -> None:
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self._tail = (self._tail + chunk)[-512:]

    def finish(self) -> None:
        last = self._tail.rstrip(b"\r\n").rsplit(b"\n", 1)[-1]
        if not last.startswith(self.MARKERS):
            raise ZimSendError(
                "EXPORT_TRUNCATED",
                "the export ended before its completion "
                "line; run it again (nothing was lost on the server)",
                http_status=502,
            )
