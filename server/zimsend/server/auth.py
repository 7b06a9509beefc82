"""Who is calling: API key + client id on every public RPC (SPEC.md §2).

The key is looked up by its peppered HMAC (the database never holds it in clear), so the
lookup itself is the comparison; the client id is then compared in constant time. Every
failure that involves a key answers `INVALID_API_KEY` whatever the reason (unknown, revoked,
or another client's), so an attacker learns nothing about which keys or clients exist.
A key that passed is remembered for `VerifiedKeys.ttl` (1 s) by a keyed hash, so a busy client
costs one database lookup a second instead of one per request (a thread hop, a connection
checkout and a query; docs/benchmarks.md, `6ea4e80`). Revoking a key forgets it at once on the
replica that revoked it; other replicas refuse it within the TTL. Failures are never
remembered: every wrong key is looked up (and answers the same way). The lookup itself is one
prebuilt Core statement on a bare connection.

`authenticate` also reads the other headers a public call uses (request id, idempotency key)
in the same pass over the metadata: grpc builds the metadata tuple anew on every
`invocation_metadata()` call.
"""

from __future__ import annotations

import datetime as dt
import hmac
import os
import re
from dataclasses import dataclass
from typing import Any

import grpc
from sqlalchemy import bindparam, select, update
from sqlmodel import col

from zimsend.server.accounts.credentials import hash_secret
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.sending.idempotency import HEADER as IDEMPOTENCY_HEADER
from zimsend.server.state import ServerState
from zimsend.server.storage import ApiKey, Database, utcnow

API_KEY_HEADER = "x-api-key"
CLIENT_ID_HEADER = "x-client-id"
DEVICE_ID_HEADER = "x-device-id"
REQUEST_ID_HEADER = "x-request-id"
_CALL_HEADERS = (
    API_KEY_HEADER,
    CLIENT_ID_HEADER,
    DEVICE_ID_HEADER,
    REQUEST_ID_HEADER,
    IDEMPOTENCY_HEADER,
)
#: A caller's own X-Request-ID passes Envoy (`preserve_external_request_id`); it goes into logs
#: and the database, so only a short plain one is kept.
_PLAIN_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_LAST_USED_RESOLUTION = dt.timedelta(minutes=1)
_KEY_BY_HASH = select(
    col(ApiKey.id),
    col(ApiKey.client_id),
    col(ApiKey.test),
    col(ApiKey.revoked_at),
    col(ApiKey.last_used_at),
).where(col(ApiKey.key_hash) == bindparam("key_hash"))


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated caller and the headers of its call. `device_id` is the raw
    `X-Device-ID` header (not yet checked: only send calls give it a meaning); `request_id`
    the call's (`request_id`); `idempotency_key` the raw `Idempotency-Key` header."""

    client_id: str
    key_id: str
    test: bool
    device_id: str | None = None
    request_id: str = ""
    idempotency_key: str | None = None


async def authenticate(state: ServerState, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    api_key, client_id, device_header, request_header, idempotency_key = metadata_values(
        context, _CALL_HEADERS
    )
    missing = [h for h, v in (("X-API-Key", api_key), ("X-Client-ID", client_id)) if not v]
    if missing:
        raise ApiError(
            ErrorCode.MISSING_AUTH_HEADERS,
            f"Missing authentication header(s): {', '.join(missing)}. Every request needs "
            "X-API-Key and X-Client-ID.",
        )
    assert api_key is not None
    assert client_id is not None
    fingerprint = state.verified_keys.fingerprint(api_key)
    caller: Caller | None = state.verified_keys.get(fingerprint)
    if caller is None:
        key_hash = hash_secret(state.pepper, api_key)
        caller = await state.db_call(_check_key, state.db, key_hash, client_id)
        state.verified_keys.put(fingerprint, caller)
    elif not hmac.compare_digest(caller.client_id.encode(), client_id.encode()):
        raise _invalid_key()
    return Caller(
        caller.client_id,
        caller.key_id,
        caller.test,
        device_header or None,
        request_id(request_header),
        idempotency_key,
    )


def request_id(header: str | None) -> str:
    """The call's request id: Envoy's `x-request-id` (REST and gRPC through the gateway), or a
    new one for a direct call or an unusable value. It follows the messages the call queues
    into every log line about them (docs/operations.md)."""
    if header is not None and _PLAIN_REQUEST_ID.fullmatch(header):
        return header
    return new_request_id()


#: The bits `uuid.UUID(version=4)` sets: the version (4) and the RFC 4122 variant (10xx).
_UUID4_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID4_SET = (0x4000 << 64) | (0x8000 << 48)


def new_request_id() -> str:
    """`str(uuid.uuid4())` (random, version 4, lower-case hex in 8-4-4-4-12) without building
    the UUID object, which costs twice as much."""
    n = int.from_bytes(os.urandom(16)) & _UUID4_CLEAR | _UUID4_SET
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def metadata_value(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str | None:
    """First value of an incoming metadata key (names are lower-case in gRPC)."""
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


def metadata_values(
    context: grpc.aio.ServicerContext[Any, Any], names: tuple[str, ...]
) -> list[str | None]:
    """`metadata_value` of each of `names`, in one pass: grpc builds the metadata tuple anew
    on every `invocation_metadata()` call."""
    found: list[str | None] = [None] * len(names)
    for key, value in context.invocation_metadata() or ():
        if key in names:
            index = names.index(key)
            if found[index] is None:
                found[index] = value if isinstance(value, str) else value.decode("utf-8", "replace")
    return found


def _invalid_key() -> ApiError:
    return ApiError(
        ErrorCode.INVALID_API_KEY,
        "Invalid API key for this X-Client-ID (unknown, revoked, or another client's).",
    )


def _check_key(db: Database, key_hash: str, client_id: str) -> Caller:
    now = utcnow()
    with db.engine.connect() as connection:
        key = connection.execute(_KEY_BY_HASH, {"key_hash": key_hash}).first()
    valid = (
        key is not None
        and key.revoked_at is None
        and hmac.compare_digest(key.client_id.encode(), client_id.encode())
    )
    if not valid or key is None:
        raise _invalid_key()
    if key.last_used_at is None or now - key.last_used_at > _LAST_USED_RESOLUTION:
        # At most one write a minute per key: the hot path stays read-only.
        with db.write() as session:
            session.execute(update(ApiKey).where(col(ApiKey.id) == key.id).values(last_used_at=now))
    return Caller(key.client_id, key.id, key.test)
