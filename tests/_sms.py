"""Helpers for the SmsService tests (test_sms_*.py, test_validation.py).

The tests talk to a real `zimsend serve` over gRPC. What the public API cannot do — a phone
being online, a message the dispatcher moved to `sent`, a message from 2025 — is arranged
directly in the server's SQLite file through the storage layer (`Database`), which is safe
next to the running server (WAL, BEGIN IMMEDIATE).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message as ProtoMessage
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import update
from sqlmodel import col

from zimsend.server import accounts
from zimsend.server.accounts import credentials
from zimsend.server.storage import Database, Device, Message, utcnow

UTC = dt.UTC
DetailT = TypeVar("DetailT", bound=ProtoMessage)


@dataclass(frozen=True)
class Account:
    """A client with a live key and a test key, created in-process (no subprocess per key)."""

    client_id: str
    live_key: str
    test_key: str

    def md(
        self, *, test: bool = False, device: str | None = None, idempotency_key: str | None = None
    ) -> tuple[tuple[str, str], ...]:
        out = [
            ("x-api-key", self.test_key if test else self.live_key),
            ("x-client-id", self.client_id),
        ]
        if device is not None:
            out.append(("x-device-id", device))
        if idempotency_key is not None:
            out.append(("idempotency-key", idempotency_key))
        return tuple(out)


def new_account(db: Database, pepper: bytes, name: str = "sms-tests") -> Account:
    client = accounts.create_client(db, name)
    live = accounts.create_api_key(db, pepper, client.id, "live")
    test = accounts.create_api_key(db, pepper, client.id, "sandbox", test=True)
    return Account(client.id, live.secret, test.secret)


def new_device(db: Database, pepper: bytes, client_id: str, *, online: bool = False) -> str:
    device = accounts.create_device(
        db, pepper, client_id, "phone", server_address="127.0.0.1:1"
    ).device
    if online:
        set_online(db, device.id)
    return device.id


def set_online(db: Database, device_id: str, online: bool = True, **values: Any) -> None:
    """Presence as a replica holding the phone's stream would write it."""
    now = utcnow()
    with db.write() as session:
        session.execute(
            update(Device)
            .where(col(Device.id) == device_id)
            .values(
                online=online,
                last_seen_at=now if online else None,
                connected_at=now if online else None,
                **values,
            )
        )


def update_message(db: Database, message_id: str, **values: Any) -> None:
    with db.write() as session:
        session.execute(update(Message).where(col(Message.id) == message_id).values(**values))


def get_message(db: Database, message_id: str) -> Message:
    with db.session() as session:
        message = session.get(Message, message_id)
        assert message is not None
        return message


def insert_message(db: Database, client_id: str, **values: Any) -> str:
    """A message row as if it had been sent at `created_at` (default now) and lived on."""
    created = values.pop("created_at", utcnow())
    fields: dict[str, Any] = dict(
        id=credentials.new_id("msg"),
        client_id=client_id,
        to="+33612345678",
        body=f"inserted {uuid.uuid4().hex[:8]}",
        status="queued",
        created_at=created,
        queued_at=created,
        due_at=created,
        expires_at=created + dt.timedelta(hours=24),
    )
    fields.update(values)
    with db.write() as session:
        session.add(Message(**fields))
    return str(fields["id"])


def unique_text(label: str = "msg") -> str:
    """A body no other test uses, so `search=` finds exactly this test's messages."""
    return f"{label} {uuid.uuid4().hex}"


def status_detail(error: grpc.RpcError, kind: type[DetailT]) -> DetailT | None:
    """The first `kind` (ErrorInfo, RetryInfo, BadRequest) among the google.rpc.Status details
    of a failed call, or None; the one reader of status details the tests share."""
    status = rpc_status.from_call(error)
    assert status is not None, "the server must attach google.rpc.Status details"
    for detail in status.details:
        if detail.Is(kind.DESCRIPTOR):
            found = kind()
            detail.Unpack(found)
            return found
    return None


def error_reason(error: grpc.RpcError) -> str:
    """The SPEC error code (google.rpc.ErrorInfo.reason) of a failed call."""
    info = status_detail(error, error_details_pb2.ErrorInfo)
    assert info is not None, f"no ErrorInfo in the status of {error}"
    return str(info.reason)


def retry_delay(error: grpc.RpcError) -> float:
    """The RetryInfo delay of a failed call, in seconds."""
    info = status_detail(error, error_details_pb2.RetryInfo)
    assert info is not None, f"no RetryInfo in the status of {error}"
    return float(info.retry_delay.ToTimedelta().total_seconds())


def message_of(error: grpc.RpcError) -> str:
    """The status message of a failed call (grpc's types say it may be absent; ours never is)."""
    message = error.details()
    assert message is not None, "a failed call from the server always says why"
    return message


def headers_of(error: grpc.RpcError) -> dict[str, str]:
    """The initial metadata of a failed call: the `zimsend-error-code`, `retry-after`, ... that
    Envoy turns into HTTP headers. grpc raises errors that are also `grpc.Call`s; its types keep
    the two apart."""
    call = cast(grpc.Call, error)
    return {key: str(value) for key, value in call.initial_metadata() or ()}


def violations(error: grpc.RpcError) -> dict[str, str]:
    """BadRequest field violations of a failed call: {field: description}."""
    bad = status_detail(error, error_details_pb2.BadRequest)
    return {v.field: v.description for v in bad.field_violations} if bad is not None else {}


def fails(call: Any, request: Any, metadata: Any, timeout: float = 10) -> grpc.RpcError:
    """Call a unary RPC that must fail; return its error."""
    try:
        call(request, metadata=metadata, timeout=timeout)
    except grpc.RpcError as error:
        return error
    raise AssertionError(f"{request!r} was accepted")


def later(**delta: float) -> str:
    """An RFC 3339 time relative to now."""
    return (utcnow() + dt.timedelta(**delta)).isoformat().replace("+00:00", "Z")
