"""Every failure the SDK reports is a `ZimSendError` carrying SPEC §10's code.

Why one class per code family: callers want `except RateLimitError` or `except NotFoundError`
rather than comparing strings, yet every error still has the exact SPEC `code` (and the
`http_status` a REST caller would have seen, whichever transport was used), so code written
against the REST envelope's `error.code` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

from zimsend.v1 import errors_pb2

__all__ = [
    "AuthenticationError",
    "ConflictError",
    "DeviceUnavailableError",
    "FieldViolation",
    "InvalidRequestError",
    "NotFoundError",
    "OtpError",
    "RateLimitError",
    "RequestTimeout",
    "ServerError",
    "TransportError",
    "ZimSendError",
    "error_for",
]


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a refused request: `field` is its JSON path (`messages[3].to`)."""

    field: str
    description: str


class ZimSendError(Exception):
    """A call failed. `code` is SPEC §10's code (`INVALID_PHONE_NUMBER`, ...), `message` says
    what to do, `http_status` is the HTTP status of the REST answer (the same number over gRPC),
    `retry_after` the seconds the server asked to wait (429/503), `violations` the bad fields."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        http_status: int = 0,
        retry_after: float | None = None,
        violations: tuple[FieldViolation, ...] = (),
    ) -> None:
        super().__init__(f"{code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.http_status = http_status
        self.retry_after = retry_after
        self.violations = violations

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, http_status={self.http_status})"


class AuthenticationError(ZimSendError):
    """MISSING_AUTH_HEADERS, INVALID_API_KEY, INVALID_CLIENT_ID: check the profile's key."""


class InvalidRequestError(ZimSendError):
    """A 400 that names the field and the limit (INVALID_PHONE_NUMBER, MESSAGE_TOO_LONG, ...)."""


class NotFoundError(ZimSendError):
    """MESSAGE_NOT_FOUND, INVALID_DEVICE_ID, API_KEY_NOT_FOUND, WEBHOOK_NOT_FOUND, ..."""


class ConflictError(ZimSendError):
    """IDEMPOTENCY_KEY_REUSED: the same Idempotency-Key was sent with another body."""


class RateLimitError(ZimSendError):
    """RATE_LIMIT_EXCEEDED (429): raised only once the client's retries are used up."""


class OtpError(ZimSendError):
    """OTP_EXPIRED, OTP_NOT_FOUND, OTP_MAX_ATTEMPTS, OTP_RATE_LIMIT."""


class DeviceUnavailableError(ZimSendError):
    """DEVICE_OFFLINE, NO_DEVICE_AVAILABLE (503): no phone can take an immediate send now."""


class ServerError(ZimSendError):
    """INTERNAL, UNAVAILABLE and other 5xx the server or the gateway answered."""


class TransportError(ZimSendError):
    """No answer at all: the connection was refused or cut (code `CONNECTION_ERROR`). Whether
    the server acted is unknown, which is why only idempotent or keyed calls are retried."""


class RequestTimeout(TransportError):
    """No answer within the client's timeout (code `TIMEOUT`)."""


_REASON = errors_pb2.ErrorReason
#: gRPC status → HTTP status, as Envoy's transcoder and grpc-gateway map them.
_HTTP_OF_GRPC = {3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 13: 500, 14: 503, 16: 401}


def _http_statuses() -> dict[str, int]:
    """Every error reason's HTTP status, from the reasons' one list (errors.proto)."""
    statuses = {"NOT_FOUND": 404}  # the gateway's own: no such path
    for value in _REASON.DESCRIPTOR.values:
        if value.number:
            grpc_status = value.GetOptions().Extensions[errors_pb2.grpc_status]
            statuses[value.name] = _HTTP_OF_GRPC.get(grpc_status, 500)
    return statuses


HTTP_STATUS = _http_statuses()

_FAMILY: dict[str, type[ZimSendError]] = {
    _REASON.Name(reason): family
    for reason, family in (
        (_REASON.MISSING_AUTH_HEADERS, AuthenticationError),
        (_REASON.INVALID_API_KEY, AuthenticationError),
        (_REASON.INVALID_CLIENT_ID, AuthenticationError),
        (_REASON.DEVICE_OFFLINE, DeviceUnavailableError),
        (_REASON.NO_DEVICE_AVAILABLE, DeviceUnavailableError),
        (_REASON.RATE_LIMIT_EXCEEDED, RateLimitError),
        (_REASON.IDEMPOTENCY_KEY_REUSED, ConflictError),
        (_REASON.OTP_EXPIRED, OtpError),
        (_REASON.OTP_MAX_ATTEMPTS, OtpError),
        (_REASON.OTP_NOT_FOUND, OtpError),
        (_REASON.OTP_RATE_LIMIT, OtpError),
    )
}


def error_for(
    code: str,
    message: str,
    *,
    http_status: int = 0,
    retry_after: float | None = None,
    violations: tuple[FieldViolation, ...] = (),
) -> ZimSendError:
    """The exception of the family `code` belongs to (by code first, then by HTTP status)."""
    status = http_status or HTTP_STATUS.get(code, 0)
    cls = _FAMILY.get(code)
    if cls is None:
        if status == 404:
            cls = NotFoundError
        elif status == 429:
            cls = RateLimitError
        elif status in (400, 413, 431) or code.startswith("INVALID_"):
            cls = InvalidRequestError
        elif status >= 500:
            cls = ServerError
        else:
            cls = ZimSendError
    return cls(code, message, http_status=status, retry_after=retry_after, violations=violations)
