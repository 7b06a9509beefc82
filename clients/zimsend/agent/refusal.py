"""Telling a refusal (stop: wrong password, disabled device) from a failure (retry).

The server ends a refused call with UNAUTHENTICATED or PERMISSION_DENIED and a google.rpc
ErrorInfo whose `reason` is stable (INVALID_DEVICE_CREDENTIALS, DEVICE_DISABLED, …), carried in
the `grpc-status-details-bin` trailer. Both the trio agent and the asyncio fleet use this.

A busy server (too many phones connecting at once) refuses differently: UNAVAILABLE with a
google.rpc.RetryInfo delay (`retry_delay`). That is not a refusal of the device — the phone
waits the delay it was given (instead of its own backoff) and tries again.

A Reconnect frame is the server's other way to send a phone away; `FATAL_RECONNECT` lists the
reasons after which reconnecting cannot help. Both tables key on the protos' generated names
(errors.proto ErrorReason, device_link.proto Reconnect.Reason), never on string literals.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from zimsend.v1 import device_link_pb2, errors_pb2

__all__ = [
    "FATAL_RECONNECT",
    "Refusal",
    "error_reason",
    "reconnect_reason",
    "refusal_of",
    "retry_delay",
]

_REFUSED = (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
_BUSY = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED)
_NAME = errors_pb2.ErrorReason.Name
#: ErrorInfo reasons a refused device link carries (a deleted device or a rotated password is
#: refused as INVALID_DEVICE_CREDENTIALS, so as not to reveal the device to a wrong password).
_EXPLAINED = {
    _NAME(
        errors_pb2.INVALID_DEVICE_CREDENTIALS
    ): "wrong device password (or unknown client/device id)",
    _NAME(errors_pb2.DEVICE_DISABLED): "this device is disabled on the server",
}
_REPAIR = (_NAME(errors_pb2.INVALID_DEVICE_CREDENTIALS),)

_Reason = device_link_pb2.Reconnect
#: Reconnect reasons that stop the agent, with what to tell its user.
FATAL_RECONNECT: dict[device_link_pb2.Reconnect.Reason.ValueType, str] = {
    _Reason.DEVICE_DELETED: "this device was deleted on the server",
    _Reason.DEVICE_DISABLED: "this device was disabled on the server",
    _Reason.PASSWORD_ROTATED: "the device password was rotated; re-pair with the new pairing URI",
    # An agent holds one stream at a time, so a REPLACED on its current stream means another
    # process connected with the same credentials. Two agents with two journals could each
    # send a re-offered message once: stop rather than fight (they would replace each other
    # forever, and "at most once" would no longer hold).
    _Reason.REPLACED: "another connection with this device's credentials replaced this one"
    " (is a second agent running with the same pairing?); stopping so that no message is"
    " sent twice",
}


def reconnect_reason(
    reconnect: device_link_pb2.Reconnect,
) -> device_link_pb2.Reconnect.Reason.ValueType:
    """Why the server sent this Reconnect: `reason_code`, or for a server older than that field
    the deprecated `reason` string read as a Reason name (REASON_UNSPECIFIED when unknown)."""
    if reconnect.reason_code:
        return reconnect.reason_code
    legacy = reconnect.reason  # deprecated field, read only for servers that lack reason_code
    names = device_link_pb2.Reconnect.Reason.keys()
    if legacy in names:
        return device_link_pb2.Reconnect.Reason.Value(legacy)
    return device_link_pb2.Reconnect.REASON_UNSPECIFIED


@dataclass(frozen=True)
class Refusal:
    """The server refused this device; retrying with the same credentials cannot help."""

    code: str
    reason: str
    details: str

    def __str__(self) -> str:
        explained = _EXPLAINED.get(self.reason)
        head = f"refused: {explained}" if explained else f"refused ({self.code})"
        tail = f" [{self.reason}]" if self.reason else ""
        hint = " — re-pair the device with a new pairing URI" if self.reason in _REPAIR else ""
        server = f": {self.details}" if self.details else ""
        return f"{head}{tail}{server}{hint}"


def _details(error: grpc.RpcError) -> Iterator[any_pb2.Any]:
    """The google.rpc.Status details in an error's trailing metadata.

    Works for sync errors (which are `grpc.Call`s) and grpc.aio's `AioRpcError` (which is not,
    but has the same accessors)."""
    trailing = getattr(error, "trailing_metadata", None)
    trailers = trailing() if callable(trailing) else None
    for key, value in trailers or ():
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            yield from status_pb2.Status.FromString(value).details


def _status(error: grpc.RpcError) -> grpc.StatusCode | None:
    code = getattr(error, "code", None)
    status = code() if callable(code) else None
    return status if isinstance(status, grpc.StatusCode) else None


def error_reason(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason in an error's trailing metadata, or ""."""
    for detail in _details(error):
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    return ""


def retry_delay(error: grpc.RpcError) -> float | None:
    """Seconds the server asked us to wait (UNAVAILABLE / RESOURCE_EXHAUSTED with a
    google.rpc.RetryInfo), or None: then the caller's own backoff decides."""
    if _status(error) not in _BUSY:
        return None
    for detail in _details(error):
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return max(0.0, float(info.retry_delay.ToTimedelta().total_seconds()))
    return None


def refusal_of(error: grpc.RpcError) -> Refusal | None:
    """A Refusal when `error` is UNAUTHENTICATED or PERMISSION_DENIED, else None."""
    status = _status(error)
    if status not in _REFUSED:
        return None
    assert status is not None
    get_details = getattr(error, "details", None)
    details = get_details() if callable(get_details) else ""
    return Refusal(code=status.name, reason=error_reason(error), details=details or "")
