"""The one small interface every way of reaching ZimSend implements (httpx's pluggable
transports, DESIGN's Style section).

A transport turns a `Request` — which RPC, its fields as JSON with proto field names, the
credentials — into the reply's JSON object, or raises a `ZimSendError` carrying SPEC's code.
It never retries: retries, idempotency keys and timeouts' meaning live in the client, once,
for every transport. REST (`RestTransport`, httpx) is the default; `GrpcTransport` speaks to
the same Envoy listener with the generated stubs.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["AsyncTransport", "Operation", "Request", "Transport"]


@dataclass(frozen=True)
class Operation:
    """One RPC of protos/zimsend/v1 and its REST binding (`google.api.http`).

    `idempotent`: repeating it has no further effect (reads), so a lost answer may be asked
    again. `keyed`: it takes an `Idempotency-Key`, which makes repeating it safe too.
    """

    service: str  # "SmsService"
    method: str  # "SendSms"
    module: str  # "sms": zimsend.v1.sms_pb2 / sms_pb2_grpc
    http_method: str  # "POST"
    path: str  # "/v1/sms/status/{message_id}"
    idempotent: bool = False
    keyed: bool = False
    streaming: bool = False

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(part[1:-1] for part in self.path.split("/") if part.startswith("{"))


@dataclass(frozen=True)
class Request:
    """What to call. `headers` are lower-case (`x-api-key`, `x-client-id`, and when given
    `x-device-id`, `idempotency-key`): HTTP headers for REST, metadata for gRPC."""

    operation: Operation
    fields: Mapping[str, Any]
    headers: Mapping[str, str]
    timeout: float | None


class Transport(abc.ABC):
    """Blocking transport (used by `ZimSend`)."""

    @abc.abstractmethod
    def handle(self, request: Request) -> dict[str, Any]:
        """The reply as JSON (proto field names), or raise ZimSendError."""

    @abc.abstractmethod
    def stream(self, request: Request) -> Iterator[bytes]:
        """The chunks of a server-streaming `google.api.HttpBody` reply (the export)."""

    def close(self) -> None:  # noqa: B027 - optional: a transport may hold nothing to release
        """Release connections."""


class AsyncTransport(abc.ABC):
    """asyncio transport (used by `AsyncZimSend`)."""

    @abc.abstractmethod
    async def handle(self, request: Request) -> dict[str, Any]:
        """The reply as JSON (proto field names), or raise ZimSendError."""

    @abc.abstractmethod
    def stream(self, request: Request) -> AsyncIterator[bytes]:
        """The chunks of a server-streaming `google.api.HttpBody` reply (the export)."""

    async def aclose(self) -> None:  # noqa: B027 - optional, as `Transport.close`
        """Release connections."""
