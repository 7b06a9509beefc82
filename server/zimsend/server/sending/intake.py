"""Accepting a send request: who may send it, when it should go, and the one transaction that
queues it (SPEC.md §3, §5).

`accept` runs the whole intake synchronously (call it through `ServerState.db_call`):

1. Idempotency first: a retry is answered from its record before anything else is checked,
   so a retry after a timeout replays even if, meanwhile, its `scheduled_at` has passed or
   its phone went offline.
2. Validation (`validation`), pure: every violation in one error.
3. Devices: `X-Device-ID` must name one of the client's devices (INVALID_DEVICE_ID). An
   immediate live send needs that device online and enabled (DEVICE_OFFLINE), or without a
   pin any online enabled phone (NO_DEVICE_AVAILABLE). Scheduled sends skip the availability
   checks (they wait for a device, and expire after the TTL if none comes). Test-key sends
   skip them too: the built-in simulated device takes them, and they are never pinned to a
   real phone (a sandbox message must not reach one).
4. One write transaction: every message (`queued`) and the idempotency record, or nothing.
   A caller that must write more rows with the messages (the OTP service: its `otps` row and
   the sealed text, which is bound to the new message id) passes `before_commit`; whatever it
   raises rolls the whole request back.

The caller notifies the dispatcher (`ServerState.new_work`) once this returns a new response.

Why Core statements built once (`_ONLINE`, `_AHEAD`) and a Core insert: this is the hottest
path of the server, and building SQLAlchemy expressions, loading ORM objects and running the
unit of work cost more CPU than SQLite itself (`zimsend bench`, docs/benchmarks.md). The ORM
stays where a caller needs it: a `before_commit` hook gets messages attached to its session.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.message import Message as ProtoMessage
from sqlalchemy import bindparam, func, insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from zimsend.server import secrets
from zimsend.server.config import Settings
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.presence import is_online
from zimsend.server.storage import Database, Device, Message, MessageStatus, get_for_client, utcnow

from . import idempotency
from .validation import SendPlan

R = TypeVar("R", bound=ProtoMessage)


@dataclass(frozen=True)
class Submission:
    """Who sends, and the idempotency facts of the request (key None: no idempotency)."""

    client_id: str
    test: bool
    device_header: str | None
    operation: str
    key: str | None = None
    request_hash: str = ""


@dataclass(frozen=True)
class Accepted:
    """What `build_response` gets: the rows just queued and the facts a response shows."""

    messages: list[Message]
    batch_id: str | None
    queued_at: dt.datetime
    estimated_delivery: dt.datetime
    plan: SendPlan


@dataclass(frozen=True)
class _Availability:
    pinned: Device | None
    #: Devices, or rows with the same attribute names (`_ONLINE`: what is_online reads).
    online: list[Any]


_ONLINE = select(  # type: ignore[call-overload]
    Device.id, Device.online, Device.last_seen_at, Device.deleted_at, Device.send_interval_ms,
).where(
    Device.client_id == bindparam("client_id"),
    Device.online == True,  # noqa: E712 - SQL comparison
    Device.enabled == True,  # noqa: E712
    Device.is_simulated == False,  # noqa: E712
    Device.deleted_at.is_(None),  # type: ignore[union-attr]
)
_AHEAD = select(func.count()).select_from(Message).where(
    Message.status == MessageStatus.QUEUED,
    Message.client_id == bindparam("client_id"),
    Message.test == bindparam("test"),
    Message.priority <= bindparam("priority"),
    Message.due_at <= bindparam("base"),
)
_INSERT = insert(Message.__table__)  # type: ignore[attr-defined]
_COLUMNS = [c.name for c in Message.__table__.columns]  # type: ignore[attr-defined]


def accept(
    db: Database,
    settings: Settings,
    submission: Submission,
    validate: Callable[[dt.datetime], SendPlan],
    build_response: Callable[[Accepted], R],
    response_type: type[R],
    *,
    before_commit: Callable[[Session, Accepted], None] | None = None,
) -> tuple[R, bool]:
    """Queue the request's messages; returns (response, created). `created` is False when
    the response is an idempotent replay and nothing was written."""
    now = utcnow()
    if submission.key is not None:
        stored = _find(db, submission, now)
        if stored is not None:
            return idempotency.replay(stored, response_type), False
    plan = validate(now)
    with db.session() as session:
        availability = _check_devices(session, settings, submission, plan, now)
        estimate = _estimate(session, settings, submission, plan, availability, now)
    try:
        with db.write() as session:
            accepted = _queue(session, settings, submission, plan, availability, estimate, now,
                              attach=before_commit is not None)
            if before_commit is not None:
                before_commit(session, accepted)
            response = build_response(accepted)
            if submission.key is not None:
                idempotency.store(
                    session, client_id=submission.client_id, key=submission.key,
                    operation=submission.operation, request_hash=submission.request_hash,
                    response=response, now=now,
                )
    except IntegrityError:
        # A concurrent request with the same key committed first: answer as it did.
        if submission.key is None:
            raise
        stored = _find(db, submission, utcnow())
        if stored is None:
            raise
        return idempotency.replay(stored, response_type), False
    return response, True


def _find(db: Database, submission: Submission, now: dt.datetime) -> dict[str, Any] | None:
    assert submission.key is not None
    with db.session() as session:
        return idempotency.find(
            session, client_id=submission.client_id, key=submission.key,
            operation=submission.operation, request_hash=submission.request_hash, now=now,
        )


def _check_devices(
    session: Session, settings: Settings, submission: Submission, plan: SendPlan,
    now: dt.datetime,
) -> _Availability:
    pinned: Device | None = None
    if submission.device_header:
        pinned = get_for_client(session, Device, submission.device_header, submission.client_id)
        # The simulated device only takes sandbox messages: a live one pinned there would wait
        # for nothing.
        foreign = pinned is None or pinned.deleted_at is not None
        if foreign or (pinned is not None and pinned.is_simulated and not submission.test):
            raise ApiError.invalid(
                ErrorCode.INVALID_DEVICE_ID, "X-Device-ID",
                "X-Device-ID does not name one of this client's devices; list them with "
                "GET /v1/devices, or send without X-Device-ID to let ZimSend choose",
            )
    if submission.test:
        return _Availability(None, [])  # the simulated device takes sandbox messages
    window = settings.offline_after_seconds
    if pinned is not None:
        available = pinned.enabled and is_online(pinned, now, window)
        if plan.immediate and not available:
            state = "disabled" if not pinned.enabled else "offline"
            raise ApiError(
                ErrorCode.DEVICE_OFFLINE,
                f"Device {pinned.id} is {state}: check that the phone is on, connected and "
                "running ZimSend (and enabled), send without X-Device-ID, or schedule the "
                "message with scheduled_at so it waits for the device",
            )
        return _Availability(pinned, [pinned] if available else [])
    candidates = session.connection().execute(_ONLINE, {"client_id": submission.client_id})
    online = [d for d in candidates if is_online(d, now, window)]
    if plan.immediate and not online:
        raise ApiError(
            ErrorCode.NO_DEVICE_AVAILABLE,
            "No device of this client is online: start the ZimSend app on a phone (GET "
            "/v1/devices shows their status), or schedule the message with scheduled_at so it "
            "waits for a device",
        )
    return _Availability(None, online)


def _estimate(
    session: Session, settings: Settings, submission: Submission, plan: SendPlan,
    availability: _Availability, now: dt.datetime,
) -> dt.datetime:
    """When the first of these messages should go: its due time, plus the messages due before
    it at the same or a higher priority, paced by the devices that will share them."""
    base = plan.scheduled_at or now
    ahead = session.connection().execute(_AHEAD, {
        "client_id": submission.client_id, "test": submission.test,
        "priority": plan.priority, "base": base,
    }).scalar_one()
    devices = availability.online
    intervals = [
        (d.send_interval_ms if d.send_interval_ms is not None else settings.default_send_interval_ms)
        for d in devices
    ] or [settings.default_send_interval_ms]
    # N phones at interval i drain one message every i / N on average.
    seconds = int(ahead) * (sum(intervals) / len(intervals)) / 1000 / max(1, len(devices))
    return base + dt.timedelta(seconds=seconds)


def _queue(
    session: Session, settings: Settings, submission: Submission, plan: SendPlan,
    availability: _Availability, estimate: dt.datetime, now: dt.datetime, *, attach: bool,
) -> Accepted:
    """Write the messages: attached ORM objects when a hook will work on them (`attach`),
    else one Core INSERT (the same columns and values, without the unit of work)."""
    due_at = plan.scheduled_at or now
    expires_at = due_at + dt.timedelta(hours=settings.message_ttl_hours)
    batch_id = secrets.new_id("batch") if plan.kind != "single" else None
    pinned = availability.pinned.id if availability.pinned is not None else None
    rows = [
        Message(
            id=secrets.new_id("msg"), client_id=submission.client_id, batch_id=batch_id,
            to=draft.to, body=draft.body, priority=plan.priority,
            status=MessageStatus.QUEUED, test=submission.test, pinned_device_id=pinned,
            sim_slot=plan.sim_slot, segments=draft.segments, encoding=draft.encoding,
            scheduled_at=plan.scheduled_at, due_at=due_at, expires_at=expires_at,
            created_at=now, queued_at=now, meta=draft.meta, webhook_url=plan.webhook_url,
        )
        for draft in plan.drafts
    ]
    if attach:
        session.add_all(rows)
        session.flush()
    else:
        session.connection().execute(
            _INSERT, [{name: getattr(row, name) for name in _COLUMNS} for row in rows]
        )
    return Accepted(rows, batch_id, now, estimate, plan)
