"""`Idempotency-Key` (SPEC.md §3 Beyond): a retry never sends a second SMS.

The contract: the same key with the same request within 24 h answers the original response and
creates nothing; the same key with a different request is `IDEMPOTENCY_KEY_REUSED` (409).

- The key comes from the `idempotency-key` metadata header (`Idempotency-Key` over REST) or
  the request's `idempotency_key` field; giving both with different values is an error.
- "Same request" means the same canonical hash: the RPC name, the serialized request without
  its key (deterministic protobuf bytes: map keys sorted), the pinned device (`X-Device-ID`
  changes what a send does) and whether the key is a test key.
- The record is inserted in the same transaction as the messages it describes, under the
  unique constraint (client_id, key). Two simultaneous requests with one key therefore commit
  exactly once; the loser gets an IntegrityError, rolls back everything it wrote, re-reads the
  winner's record and replays it (`intake.accept`).
- Records older than 24 h are ignored when read and deleted by the insert that reuses their
  key (the worker may also sweep them by `created_at`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any, NoReturn, TypeVar

from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage
from sqlalchemy import delete
from sqlmodel import Session, col, select

from zimsend.server.errors import ErrorCode, Reason
from zimsend.server.storage import IdempotencyRecord

from .fields import Violations, shown

WINDOW = dt.timedelta(hours=24)
MAX_KEY_CHARS = 255
HEADER = "idempotency-key"

P = TypeVar("P", bound=ProtoMessage)


def resolve_key(header: str | None, field_value: str) -> str | None:
    """The request's key, from the header or the field (None when neither is given)."""
    header_key = (header or "").strip()
    field_key = field_value.strip()
    if header_key and field_key and header_key != field_key:
        _fail(
            ErrorCode.INVALID_REQUEST,
            "differs from the Idempotency-Key header; give one of them, or the same value in both",
        )
    key = header_key or field_key
    if not key:
        return None
    if len(key) > MAX_KEY_CHARS or not key.isprintable():
        _fail(
            ErrorCode.INVALID_REQUEST,
            f"must be 1-{MAX_KEY_CHARS} printable characters (got {len(key)} characters)",
        )
    return key


def request_hash(
    request: ProtoMessage, *, operation: str, device_id: str | None, test: bool
) -> str:
    """sha256 of everything that decides what a send request does, minus its key."""
    canonical = type(request)()
    canonical.CopyFrom(request)
    if "idempotency_key" in canonical.DESCRIPTOR.fields_by_name:
        canonical.ClearField("idempotency_key")
    digest = hashlib.sha256()
    for part in (operation, device_id or "", "test" if test else "live"):
        digest.update(part.encode())
        digest.update(b"\0")
    digest.update(canonical.SerializeToString(deterministic=True))
    return digest.hexdigest()


def find(
    session: Session,
    *,
    client_id: str,
    key: str,
    operation: str,
    request_hash: str,
    now: dt.datetime,
) -> dict[str, Any] | None:
    """The stored response for this key, or None if the key is new (or its record expired).

    Raises IDEMPOTENCY_KEY_REUSED when the key was used for a different request.
    """
    record = session.exec(
        select(IdempotencyRecord).where(
            IdempotencyRecord.client_id == client_id, IdempotencyRecord.key == key
        )
    ).first()
    if record is None or record.created_at <= now - WINDOW:
        return None
    if record.operation != operation or record.request_hash != request_hash:
        _fail(
            ErrorCode.IDEMPOTENCY_KEY_REUSED,
            f"{shown(key)} was already used in the last 24 h for a different request; a "
            "retry must repeat the request exactly, a new request needs a new key",
        )
    return record.response


def store(
    session: Session,
    *,
    client_id: str,
    key: str,
    operation: str,
    request_hash: str,
    response: ProtoMessage,
    now: dt.datetime,
) -> None:
    """Record the response inside the caller's write transaction.

    Flushes at once, so a concurrent winner surfaces as IntegrityError before the caller
    writes anything else.
    """
    session.execute(
        delete(IdempotencyRecord).where(
            col(IdempotencyRecord.client_id) == client_id,
            col(IdempotencyRecord.key) == key,
            col(IdempotencyRecord.created_at) <= now - WINDOW,
        )
    )
    session.add(
        IdempotencyRecord(
            client_id=client_id,
            key=key,
            operation=operation,
            request_hash=request_hash,
            response=json_format.MessageToDict(response, preserving_proto_field_name=True),
            created_at=now,
        )
    )
    session.flush()


def _fail(code: Reason, description: str) -> NoReturn:
    v = Violations()
    v.add(code, "idempotency_key", description)
    raise v.error()


def replay(stored: dict[str, Any], response_type: type[P]) -> P:
    """The original response, rebuilt from its stored JSON."""
    return json_format.ParseDict(stored, response_type(), ignore_unknown_fields=True)
