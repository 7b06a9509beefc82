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

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from zimsend.server.storage.availability import StorageProblem, storage_problem

ERROR_DOMAIN = "zimsend.dev"
ERROR_CODE_HEADER = "zimsend-error-code"
#: Retry-After while storage is full or unwritable: the server re-checks every second, and
#: Envoy's health check (2 s, two failures) follows within about 5 s.
STORAGE_RETRY_AFTER_SECONDS = 5


class ErrorCode(enum.Enum):
    """SPEC.md §10 codes, each with the gRPC code whose HTTP mapping (in Envoy and
    grpc-gateway alike) is the documented HTTP status."""

    MISSING_AUTH_HEADERS = grpc.StatusCode.INVALID_ARGUMENT  # 400
    INVALID_API_KEY = grpc.StatusCode.UNAUTHENTICATED  # 401
    INVALID_CLIENT_ID = grpc.StatusCode.UNAUTHENTICATED  # 401
    INVALID_DEVICE_ID = grpc.StatusCode.NOT_FOUND  # 404
    DEVICE_OFFLINE = grpc.StatusCode.UNAVAILABLE  # 503
    NO_DEVICE_AVAILABLE = grpc.StatusCode.UNAVAILABLE  # 503
    INVALID_PHONE_NUMBER = grpc.StatusCode.INVALID_ARGUMENT  # 400
    MESSAGE_TOO_LONG = grpc.StatusCode.INVALID_ARGUMENT  # 400
    INVALID_PRIORITY = grpc.StatusCode.INVALID_ARGUMENT  # 400
    INVALID_SCHEDULED_DATE = grpc.StatusCode.INVALID_ARGUMENT  # 400
    INVALID_REQUEST = grpc.StatusCode.INVALID_ARGUMENT  # 400
    OTP_EXPIRED = grpc.StatusCode.FAILED_PRECONDITION  # 400
    OTP_MAX_ATTEMPTS = grpc.StatusCode.RESOURCE_EXHAUSTED  # 429
    OTP_NOT_FOUND = grpc.StatusCode.NOT_FOUND  # 404
    OTP_RATE_LIMIT = grpc.StatusCode.RESOURCE_EXHAUSTED  # 429
    MESSAGE_NOT_FOUND = grpc.StatusCode.NOT_FOUND  # 404
    CANNOT_CANCEL_MESSAGE = grpc.StatusCode.FAILED_PRECONDITION  # 400
    CANNOT_RESEND_MESSAGE = grpc.StatusCode.FAILED_PRECONDITION  # 400
    RATE_LIMIT_EXCEEDED = grpc.StatusCode.RESOURCE_EXHAUSTED  # 429
    TOO_MANY_RECIPIENTS = grpc.StatusCode.INVALID_ARGUMENT  # 400
    INVALID_WEBHOOK_URL = grpc.StatusCode.INVALID_ARGUMENT  # 400
    INTERNAL = grpc.StatusCode.INTERNAL  # 500
    # Beyond SPEC §10: resources SPEC adds (management paths) and the Idempotency-Key.
    API_KEY_NOT_FOUND = grpc.StatusCode.NOT_FOUND  # 404
    WEBHOOK_NOT_FOUND = grpc.StatusCode.NOT_FOUND  # 404
    EVENT_NOT_FOUND = grpc.StatusCode.NOT_FOUND  # 404
    IDEMPOTENCY_KEY_REUSED = grpc.StatusCode.ALREADY_EXISTS  # 409
    # Beyond SPEC §10, the device link (SPEC §9 leaves its protocol to us): too many phones are
    # connecting at once; retry after the RetryInfo delay.
    SERVER_BUSY = grpc.StatusCode.UNAVAILABLE  # 503
    # The phone opened its stream but sent no DeviceHello in time; it may reconnect.
    HELLO_TIMEOUT = grpc.StatusCode.DEADLINE_EXCEEDED
    # Beyond SPEC §10: the server cannot do its job right now (its storage is full or cannot
    # be written; the call gate's "shutting down"); always with a RetryInfo / Retry-After.
    UNAVAILABLE = grpc.StatusCode.UNAVAILABLE  # 503
    # The phone's stream (DeviceLink), not seen by REST clients.
    INVALID_DEVICE_CREDENTIALS = grpc.StatusCode.UNAUTHENTICATED
    DEVICE_DISABLED = grpc.StatusCode.PERMISSION_DENIED

    # Enum members with equal values would be aliases; keep each name its own member.
    def __new__(cls, status: grpc.StatusCode) -> ErrorCode:
        obj = object.__new__(cls)
        obj._value_ = (len(cls.__members__), status)
        return obj

    @property
    def status(self) -> grpc.StatusCode:
        return self.value[1]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field: `field` is the request's JSON path (`recipients[3]`), `description`
    says what is wrong and what is allowed."""

    field: str
    description: str


@dataclass
class ApiError(Exception):
    """Raise anywhere in a handler; `abort()` turns it into the gRPC status."""

    code: ErrorCode
    message: str
    violations: list[FieldViolation] = field(default_factory=list)
    metadata: Mapping[str, str] = field(default_factory=dict)
    retry_after_seconds: float | None = None
    # More REST-visible headers (e.g. RateLimit) sent with the error's initial metadata.
    extra_headers: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def invalid(cls, code: ErrorCode, field_name: str, message: str) -> ApiError:
        """A validation error naming its field in the message and in BadRequest."""
        return cls(code, message, [FieldViolation(field_name, message)])

    def to_status(self) -> status_pb2.Status:
        details: list[any_pb2.Any] = []
        info = error_details_pb2.ErrorInfo(
            reason=self.code.name, domain=ERROR_DOMAIN, metadata=dict(self.metadata)
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
            delay = duration_pb2.Duration(
                seconds=int(seconds), nanos=int((seconds % 1) * 1e9)
            )
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return status_pb2.Status(
            code=_grpc_code_number(self.code.status), message=self.message, details=details
        )

    def headers(self) -> list[tuple[str, str]]:
        """Initial metadata: Envoy turns it into HTTP headers for REST callers."""
        out = [(ERROR_CODE_HEADER, self.code.name)]
        if self.retry_after_seconds is not None:
            out.append(("retry-after", str(max(1, round(self.retry_after_seconds)))))
        return out + self.extra_headers


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def _grpc_code_number(status: grpc.StatusCode) -> int:
    number = status.value[0]
    assert isinstance(number, int)
    assert code_pb2.Code.Name(number)
    return number


async def abort(
    context: grpc.aio.ServicerContext, error: ApiError, headers: list[tuple[str, str]] = ()  # type: ignore[assignment]
) -> None:
    """End the RPC with `error` (and `headers` as extra initial metadata). Never returns
    (grpc raises inside `abort`)."""
    try:
        await context.send_initial_metadata((*error.headers(), *headers))
    except Exception:  # noqa: BLE001 - metadata already sent (streams): the status still goes
        pass
    await context.abort_with_status(rpc_status.to_status(error.to_status()))


def violations_error(
    code: ErrorCode, violations: Iterable[FieldViolation], summary: str | None = None
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
        ErrorCode.UNAVAILABLE, problem.message, metadata={"storage": problem.value},
        retry_after_seconds=STORAGE_RETRY_AFTER_SECONDS,
    )


def known_error(exc: BaseException) -> ApiError | None:
    """The error a caller should see for `exc`: itself when it is an `ApiError`, 503
    UNAVAILABLE for a storage problem, None for anything unexpected (then: log it, INTERNAL)."""
    if isinstance(exc, ApiError):
        return exc
    problem = storage_problem(exc)
    return storage_unavailable(problem) if problem is not None else None
