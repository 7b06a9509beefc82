"""gRPC with the generated stubs (zimsend.v1.*_pb2_grpc): the same interface as REST.

Requests are built from the same JSON fields (`json_format.ParseDict`) and replies printed
back to JSON with proto field names, enum names and RFC 3339 times — what Envoy's transcoder
prints — so the client parses one shape whichever transport carried it. Errors come from the
`google.rpc.Status` in the trailers (`ErrorInfo.reason` is SPEC's code), and the HTTP status
is the one SPEC §10 gives that code.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2, status_pb2

from ._errors import FieldViolation, RequestTimeout, TransportError, ZimSendError, error_for
from ._transport import AsyncTransport, Operation, Request, Transport

__all__ = ["AsyncGrpcTransport", "GrpcTransport", "target_of"]

_GRPC_HTTP = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}


def target_of(base_url: str) -> tuple[str, bool]:
    """(`host:port`, tls) of a REST base URL: gRPC goes to the same Envoy listener."""
    from urllib.parse import urlsplit

    url = urlsplit(base_url if "://" in base_url else "http://" + base_url)
    tls = url.scheme == "https"
    port = url.port or (443 if tls else 80)
    host = url.hostname or "127.0.0.1"
    return (f"[{host}]" if ":" in host else host) + f":{port}", tls


def _types(op: Operation) -> tuple[Any, type[ProtoMessage]]:
    """(stub class, request class) of `op`."""
    pb2 = importlib.import_module(f"zimsend.v1.{op.module}_pb2")
    pb2_grpc = importlib.import_module(f"zimsend.v1.{op.module}_pb2_grpc")
    method = pb2.DESCRIPTOR.services_by_name[op.service].methods_by_name[op.method]
    request_cls = getattr(pb2, method.input_type.name)
    return getattr(pb2_grpc, f"{op.service}Stub"), request_cls


def _message(request: Request) -> ProtoMessage:
    _, request_cls = _types(request.operation)
    fields = {k: v for k, v in request.fields.items() if v is not None}
    return json_format.ParseDict(fields, request_cls(), ignore_unknown_fields=True)


def _to_json(reply: ProtoMessage) -> dict[str, Any]:
    return json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _metadata(request: Request) -> tuple[tuple[str, str], ...]:
    return tuple((k.lower(), v) for k, v in request.headers.items())


def error_from_rpc(error: grpc.RpcError) -> ZimSendError:
    """A failed call → the exception of its family, SPEC code from `ErrorInfo.reason`."""
    code: grpc.StatusCode = error.code()
    message = error.details() or code.name
    reason, violations, retry_after = "", [], None
    # The stubs say `_Metadatum` objects (.key, .value); grpc returns (key, value) tuples.
    trailers = cast("tuple[tuple[str, Any], ...]", error.trailing_metadata() or ())
    for key, value in trailers:
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info, bad, retry = (
                error_details_pb2.ErrorInfo(),
                error_details_pb2.BadRequest(),
                error_details_pb2.RetryInfo(),
            )
            if detail.Unpack(info):
                reason = info.reason
            elif detail.Unpack(bad):
                violations += [FieldViolation(v.field, v.description) for v in bad.field_violations]
            elif detail.Unpack(retry):
                retry_after = retry.retry_delay.seconds + retry.retry_delay.nanos / 1e9
    if not reason:
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return RequestTimeout("TIMEOUT", f"no answer in time: {message}")
        if code == grpc.StatusCode.UNAVAILABLE:
            return TransportError("CONNECTION_ERROR", message, http_status=503)
        if code == grpc.StatusCode.CANCELLED:
            return TransportError("CONNECTION_ERROR", message)
    return error_for(
        reason or code.name,
        message,
        http_status=0 if reason else _GRPC_HTTP.get(code, 500),
        retry_after=retry_after,
        violations=tuple(violations),
    )


class GrpcTransport(Transport):
    """`target` is `host:port` of Envoy's public listener (or the server itself). `tls`: use
    TLS with `root_certificates` (PEM bytes; None: the system's). `channel`: your own."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        channel: grpc.Channel | None = None,
    ) -> None:
        self._owned = channel is None
        if channel is None:
            channel = (
                grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates))
                if tls
                else grpc.insecure_channel(target)
            )
        self._channel = channel

    def _callable(self, op: Operation) -> Any:
        stub_cls, _ = _types(op)
        return getattr(stub_cls(self._channel), op.method)

    def handle(self, request: Request) -> dict[str, Any]:
        call = self._callable(request.operation)
        try:
            reply = call(_message(request), metadata=_metadata(request), timeout=request.timeout)
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return _to_json(reply)

    def stream(self, request: Request) -> Iterator[bytes]:
        call = self._callable(request.operation)
        replies = call(_message(request), metadata=_metadata(request), timeout=request.timeout)
        try:
            for reply in replies:
                yield reply.data
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            replies.cancel()

    def close(self) -> None:
        if self._owned:
            self._channel.close()


class AsyncGrpcTransport(AsyncTransport):
    """The asyncio twin of `GrpcTransport` (grpc.aio). The channel is opened on first use,
    inside the running event loop: grpc.aio objects belong to the loop that made them."""

    def __init__(
        self,
        target: str,
        *,
        tls: bool = False,
        root_certificates: bytes | None = None,
        channel: grpc.aio.Channel | None = None,
    ) -> None:
        self._target, self._tls, self._roots = target, tls, root_certificates
        self._owned = channel is None
        self._channel = channel

    def _callable(self, op: Operation) -> Any:
        if self._channel is None:
            self._channel = (
                grpc.aio.secure_channel(self._target, grpc.ssl_channel_credentials(self._roots))
                if self._tls
                else grpc.aio.insecure_channel(self._target)
            )
        stub_cls, _ = _types(op)
        return getattr(stub_cls(self._channel), op.method)

    async def handle(self, request: Request) -> dict[str, Any]:
        call = self._callable(request.operation)
        try:
            reply = await call(
                _message(request), metadata=_metadata(request), timeout=request.timeout
            )
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        return _to_json(reply)

    async def stream(self, request: Request) -> AsyncIterator[bytes]:
        call = self._callable(request.operation)
        replies = call(_message(request), metadata=_metadata(request), timeout=request.timeout)
        try:
            async for reply in replies:
                yield reply.data
        except grpc.RpcError as exc:
            raise error_from_rpc(exc) from None
        finally:
            replies.cancel()

    async def aclose(self) -> None:
        if self._owned and self._channel is not None:
            await self._channel.close()
