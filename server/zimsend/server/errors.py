"""The one error helper: every failure a caller can see goes through `ApiError`.

Why one helper: SPEC.md §1 promises the same error in two shapes — ZimSend's envelope
(`success: false, error: {code, message}`) for existing clients, and grpc-gateway's
`google.rpc.Status` (`code, message, details`) for gRPC tooling. The server produces only the
gRPC side: a status code chosen so that Envoy's gRPC→HTTP mapping gives SPEC §10's HTTP status,
a `google.rpc.ErrorInfo` whose `reason` is the SPEC code, `BadRequest` field violations for
validation errors, and the code again in the initial-metadata header `zimsend-error-code`
so the gateway can build the envelope without parsing the body.

Messages tell the user what to do (which field, which limit) and never contain secrets, SQL or
another client's data: they are written here or by the caller, never copied from an exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from zimsend.server.storage.availability import StorageProblem, storage_problem
from zimsend.v1 import errors_pb2

ERROR_DOMAIN = "zimsend.dev"
ERROR_CODE_HEADER = "zimsend-error-code"
#: Retry-After while storage is full or unwritable: the server re-checks every second, and
#: Envoy's health check (2 s, two failures) follows within about 5 s.
STORAGE_RETRY_AFTER_SECONDS = 5


#: The error reasons, from their one list (protos/zimsend/v1/errors.proto):
#: `ErrorCode.DEVICE_OFFLINE` is the generated value; each value's option gives its status.
ErrorCode = errors_pb2.ErrorReason
Reason: TypeAlias = errors_pb2.ErrorReason.ValueType


def reason_name(code: Reason) -> str:
    """`"DEVICE_OFFLINE"`: what ErrorInfo.reason, the header and the envelope carry."""
    return ErrorCode.Name(code)


def grpc_status(code: Reason) -> grpc.StatusCode:
    """The gRPC status `code` is returned with (its `grpc_status` option)."""
    return _STATUS[code]


def _statuses() -> dict[int, grpc.StatusCode]:
    by_number = {status.value[0]: status for status in grpc.StatusCode}
    statuses = {}
    for value in ErrorCode.DESCRIPTOR.values:
        if value.number:
            number = value.GetOptions().Extensions[errors_pb2.grpc_status]
            statuses[value.number] = by_number[number]
    return statuses


_STATUS = _statuses()


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is the request's JSON path (`recipients[3]`), `description`
    says what is wrong and what is allowed."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    """Raise anywhere in a handler; `abort()` turns it into the gRPC status."""

    code: Reason
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after_seconds: float | None = None
    # More REST-visible headers (e.g. RateLimit) sent with the error's initial metadata.
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def invalid(cls, code: Reason, field_name: str, message: str) -> ApiError:
        """A validation error naming its field in the message and in BadRequest."""
        return cls(code, message, [FieldViolation(field_name, message)])

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(
            reason=reason_name(self.code), domain=ERROR_DOMAIN, metadata=dict(self.metadata)
        )
        details.append(_pack(info))
        if self.violations:
            bad = error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in self.violations
                ]
            )
            details.append(_pack(bad))
        if self.retry_after_seconds is not None:
            seconds = max(0.0, self.retry_after_seconds)
            delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(
            code=grpc_status(self.code).value[0], message=self.message, details=details
        )

    def headers(self) -> list[tuple[str, str]]:
        """Initial metadata: Envoy turns it into HTTP headers for REST callers."""
        out = [(ERROR_CODE_HEADER, reason_name(self.code))]
        if self.retry_after_seconds is not None:
            out.append(("retry-after", str(max(1, round(self.retry_after_seconds)))))
        return out + self.extra_headers


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: ApiError,
    headers: Sequence[tuple[str, str]] = (),
) -> None:
    """End the RPC with `error` (and `headers` as extra initial metadata). Never returns
    (grpc raises inside `abort`)."""
    try:
        await context.send_initial_metadata((*error.headers(), *headers))
    except Exception:  # noqa: BLE001 - metadata already sent (streams): the status still goes
        pass
    await context.abort_with_status(rpc_status.to_status(error.to_status()))


def violations_error(
    code: Reason, violations: Iterable[FieldViolation], summary: str | None = None
) -> ApiError:
    """One error for several bad fields; the message lists them all."""
    items = list(violations)
    message = summary or "; ".join(f"{v.field}: {v.description}" for v in items)
    return ApiError(code, message, items)


def storage_unavailable(problem: StorageProblem) -> ApiError:
    """503 UNAVAILABLE for a full or unwritable database: what happened and when to retry,
    never the driver's text or SQL. ErrorInfo metadata `storage` is `full`, `unwritable`
    or `unreachable`."""
    return ApiError(
        ErrorCode.UNAVAILABLE,
        problem.message,
        metadata={"storage": problem.value},
        retry_after_seconds=STORAGE_RETRY_AFTER_SECONDS,
    )


def known_error(exc: BaseException) -> ApiError | None:
    """The error a caller should see for `exc`: itself when it is an `ApiError`, 503
    UNAVAILABLE for a storage problem, None for anything unexpected (then: log it, INTERNAL)."""
    if isinstance(exc, ApiError):
        return exc
    problem = storage_problem(exc)
    return storage_unavailable(problem) if problem is not None else None
