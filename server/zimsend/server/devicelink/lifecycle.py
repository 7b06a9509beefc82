"""Message status transitions and the outbox events they cause — in the caller's transaction.

Why one module: SPEC §3 fixes the life of a message (`queued → processing → sent → delivered`,
`failed` from queued/processing/sent) and DESIGN says every change of state writes the events it
causes in the same transaction, so an event is never lost nor invented. Every writer of a
message status — the device link (phone reports), the built-in simulated device (test keys),
the TTL sweep (today the dispatcher's slow loop, later the worker) — goes through `transition`,
so statuses, timestamps, `sms.*` events and daily aggregates always move together.

Multi-part messages (SPEC §3): a phone reports each part; the message is `sent` when all parts
are sent, `delivered` when all are delivered, `failed` as soon as one part fails — one status
and one event per logical message, never one per part.

All functions are synchronous and take an open write session (`Database.write()`), except
`expire_overdue_messages`, which owns its transactions (the worker calls it as it is).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import bindparam, or_, select
from sqlmodel import Session, col

from zimsend.server import secrets
from zimsend.server.storage import (
    NO_DEVICE,
    DailyAggregate,
    Database,
    InboundMessage,
    Message,
    MessagePart,
    MessageStatus,
    OutboxEvent,
    cached_statement,
    insert_for,
    mark_report_processed,
)

__all__ = [
    "PartReport",
    "Transition",
    "apply_part_report",
    "expire_overdue_messages",
    "iso",
    "message_event_payload",
    "record_inbound",
    "time_out_stale_processing",
    "transition",
    "write_event",
]

Outcome = Literal["sent", "delivered", "failed"]

#: SPEC §7 `sms.failed` codes a phone may report; anything else is recorded as DEVICE_ERROR.
PHONE_ERROR_CODES = frozenset(
    {"NETWORK_ERROR", "INVALID_NUMBER", "NO_CREDIT", "BLOCKED_NUMBER", "DEVICE_ERROR", "TIMEOUT"}
)
_FINAL = frozenset({MessageStatus.DELIVERED, MessageStatus.FAILED, MessageStatus.CANCELLED})
_EVENT = {
    MessageStatus.SENT: "sms.sent",
    MessageStatus.DELIVERED: "sms.delivered",
    MessageStatus.FAILED: "sms.failed",
}


@dataclass(frozen=True)
class PartReport:
    """What a phone says about one part of a message (a StatusReport without protobuf, so the
    simulated device and tests speak it too). `part_count == 0` means the whole message."""

    report_id: str
    message_id: str
    outcome: Outcome
    part_index: int = 0
    part_count: int = 0
    error_code: str = ""
    error_message: str = ""


@dataclass(frozen=True)
class Transition:
    """A message status change that was applied (and its events written)."""

    message_id: str
    old: str
    new: str


def iso(value: dt.datetime | None) -> str | None:
    """RFC 3339 in UTC with a `Z`, as every payload shows timestamps (SPEC §1)."""
    if value is None:
        return None
    text = value.astimezone(dt.UTC).isoformat(timespec="milliseconds")
    return text.replace("+00:00", "Z")


def write_event(
    session: Session, client_id: str, event_type: str, payload: dict[str, Any], *,
    webhook_url: str | None = None, now: dt.datetime,
) -> OutboxEvent:
    """Add one outbox row (the worker delivers it); `payload` is the webhook body's `data`."""
    event = OutboxEvent(
        id=secrets.new_id("evt"), client_id=client_id, event_type=event_type, payload=payload,
        webhook_url=webhook_url, created_at=now, next_attempt_at=now,
    )
    session.add(event)
    return event


def message_event_payload(message: Message) -> dict[str, Any]:
    """SPEC §7 `sms.*` data. `message` is the stored body: for OTPs the masked text."""
    payload: dict[str, Any] = {
        "message_id": message.id,
        "status": message.status,
        "to": message.to,
        "message": message.body,
        "device_id": message.device_id,
        "metadata": message.meta,
    }
    for name in ("sent_at", "delivered_at", "failed_at"):
        value = getattr(message, name)
        if value is not None:
            payload[name] = iso(value)
    if message.status == MessageStatus.FAILED:
        payload["error"] = {"code": message.error_code, "message": message.error_message}
    if message.batch_id:
        payload["batch_id"] = message.batch_id
    return payload


def transition(
    session: Session, message: Message, new: str, now: dt.datetime, *,
    error_code: str | None = None, error_message: str | None = None,
) -> list[Transition]:
    """Move `message` to `new` if SPEC §3 allows it; write its event(s) and aggregates.

    `processing → delivered` (a phone that reports delivery before the server stored "sent")
    passes through `sent`, so a webhook consumer always sees `sms.sent` before
    `sms.delivered`. A transition SPEC does not allow (e.g. out of a final status) is ignored:
    late or replayed reports never move a message backwards. Returns what was applied.
    """
    old = message.status
    if old in _FINAL or old == new:
        return []
    if new == MessageStatus.DELIVERED and old == MessageStatus.PROCESSING:
        return transition(session, message, MessageStatus.SENT, now) + transition(
            session, message, MessageStatus.DELIVERED, now
        )
    allowed = {
        MessageStatus.SENT: (MessageStatus.PROCESSING,),
        MessageStatus.DELIVERED: (MessageStatus.SENT,),
        MessageStatus.FAILED: (MessageStatus.QUEUED, MessageStatus.PROCESSING, MessageStatus.SENT),
    }
    if old not in allowed.get(MessageStatus(new), ()):
        return []
    message.status = new
    if new == MessageStatus.SENT:
        message.sent_at = now
    elif new == MessageStatus.DELIVERED:
        message.delivered_at = now
    else:
        message.failed_at = now
        message.error_code = error_code or "DEVICE_ERROR"
        message.error_message = error_message or _default_error_message(message.error_code)
    if new in _FINAL:
        message.sealed_body = None  # OTP text: no longer needed once final (models docstring)
    session.add(message)
    write_event(
        session, message.client_id, _EVENT[MessageStatus(new)], message_event_payload(message),
        webhook_url=message.webhook_url, now=now,
    )
    _count(session, message, new, now)
    return [Transition(message.id, old, new)]


def apply_part_report(
    session: Session, *, client_id: str, device_id: str, report: PartReport, now: dt.datetime
) -> list[Transition]:
    """Apply one phone report, at most once per (device, report id); returns the transitions.

    Reports about a message that is not this device's (another client's, reassigned, unknown)
    are recorded as processed and change nothing: the phone may forget them.
    """
    if not mark_report_processed(session, device_id=device_id, report_id=report.report_id):
        return []
    message = session.get(Message, report.message_id, with_for_update=True)
    if message is None or message.client_id != client_id or message.device_id != device_id:
        return []
    code = report.error_code.upper() if report.error_code else "DEVICE_ERROR"
    code = code if code in PHONE_ERROR_CODES else "DEVICE_ERROR"
    if report.part_count <= 0:
        target: str | None = report.outcome
    else:
        target = _aggregate_parts(session, message, report, code, now)
    if target is None:
        return []
    if target == MessageStatus.FAILED:
        return transition(session, message, target, now, error_code=code,
                          error_message=report.error_message or None)
    return transition(session, message, target, now)


def _aggregate_parts(
    session: Session, message: Message, report: PartReport, code: str, now: dt.datetime
) -> str | None:
    """Record one part's outcome; the message status its parts now imply (None: no change)."""
    message.parts = report.part_count
    part = session.get(MessagePart, (message.id, report.part_index))
    if part is None:
        part = MessagePart(message_id=message.id, part_index=report.part_index)
    if report.outcome == "failed":
        part.status, part.failed_at = MessageStatus.FAILED, now
        part.error_code, part.error_message = code, report.error_message or None
    elif report.outcome == "delivered" and part.status != MessageStatus.FAILED:
        part.status, part.delivered_at = MessageStatus.DELIVERED, now
        part.sent_at = part.sent_at or now
    elif report.outcome == "sent" and part.status == MessageStatus.PROCESSING:
        part.status, part.sent_at = MessageStatus.SENT, now
    session.add(part)
    session.flush()
    statuses = list(
        session.scalars(
            select(MessagePart.status).where(col(MessagePart.message_id) == message.id)
        )
    )
    if MessageStatus.FAILED in statuses:
        return MessageStatus.FAILED
    if len(statuses) < report.part_count:
        return None
    if all(s == MessageStatus.DELIVERED for s in statuses):
        return MessageStatus.DELIVERED
    if all(s in (MessageStatus.SENT, MessageStatus.DELIVERED) for s in statuses):
        return MessageStatus.SENT
    return None


def _count(session: Session, message: Message, new: str, now: dt.datetime) -> None:
    """Per-day counts (SPEC §4: they outlive message retention). `sent` counts messages that
    reached the network, `delivered` and `failed` their final outcome."""
    column = {"sent": "sent", "delivered": "delivered", "failed": "failed"}[new]

    def build(s: Session) -> Any:  # once per dialect and column (storage.cached_statement)
        values = {"sent": 0, "delivered": 0, "failed": 0, column: 1}
        return insert_for(s, DailyAggregate).values(
            client_id=bindparam("client_id"), device_id=bindparam("device_id"),
            day=bindparam("day"), **values,
        ).on_conflict_do_update(
            index_elements=["client_id", "day", "device_id"],
            set_={column: getattr(DailyAggregate, column) + 1},
        )

    session.execute(cached_statement(session, f"daily_aggregate.{column}", build), {
        "client_id": message.client_id, "device_id": message.device_id or NO_DEVICE,
        "day": now.astimezone(dt.UTC).date(),
    })


def _default_error_message(code: str) -> str:
    return {
        "EXPIRED": "No device took this message before it expired.",
        "DEVICE_ERROR": "The phone could not send this message.",
        "NETWORK_ERROR": "The mobile network refused or lost this message.",
        "INVALID_NUMBER": "The mobile network says the number is invalid.",
        "NO_CREDIT": "The SIM has no credit left.",
        "BLOCKED_NUMBER": "The number is blocked.",
        "TIMEOUT": "The phone did not confirm the send in time.",
    }.get(code, "The message failed.")


def record_inbound(
    session: Session, *, client_id: str, device_id: str, report_id: str, sender: str,
    body: str, sim_slot: int | None, received_at: dt.datetime | None, now: dt.datetime,
) -> bool:
    """Store an inbound SMS once per (device, report id) and write its `sms.received` event.
    Returns False for a replay."""
    inbound_id = secrets.new_id("in")
    received = received_at or now
    stmt = (
        insert_for(session, InboundMessage)
        .values(
            id=inbound_id, client_id=client_id, device_id=device_id, report_id=report_id,
            from_number=sender, body=body, sim_slot=sim_slot, received_at=received,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["device_id", "report_id"])
        .returning(InboundMessage.id)
    )
    if session.execute(stmt).first() is None:
        return False
    payload = {
        "id": inbound_id, "device_id": device_id, "from": sender, "message": body,
        "sim_slot": sim_slot, "received_at": iso(received),
    }
    write_event(session, client_id, "sms.received", payload, now=now)
    return True


def expire_overdue_messages(
    db: Database, now: dt.datetime, *, ttl: dt.timedelta | None = None, batch: int = 500
) -> int:
    """Fail every `queued` message whose TTL has passed (SPEC §3: `failed`, code EXPIRED).

    Overdue means `expires_at <= now`, or — for rows written without `expires_at` — `due_at`
    older than `ttl`. Works in batches of `batch` messages, one transaction each, so a huge
    backlog never holds the write lock for long. Safe to run from several processes at once
    (each row is re-checked under the lock). Returns how many messages expired.
    """
    total = 0
    while True:
        with db.write() as session:
            overdue = [col(Message.expires_at) <= now]
            if ttl is not None:
                overdue.append(
                    col(Message.expires_at).is_(None) & (col(Message.due_at) <= now - ttl)
                )
            query = (
                select(Message)
                .where(col(Message.status) == MessageStatus.QUEUED, or_(*overdue))
                .order_by(col(Message.due_at))
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            messages = list(session.scalars(query))
            for message in messages:
                transition(session, message, MessageStatus.FAILED, now, error_code="EXPIRED")
        total += len(messages)
        if len(messages) < batch:
            return total


def time_out_stale_processing(
    db: Database, now: dt.datetime, *, after: dt.timedelta, batch: int = 500
) -> int:
    """Fail (`TIMEOUT`) messages handed to a phone more than `after` ago whose phone is gone
    (offline or deleted): without this they would stay `processing` forever. A phone that
    comes back later re-reports them, and the reports change nothing (final status). Returns
    how many timed out."""
    from zimsend.server.storage import Device

    total = 0
    while True:
        with db.write() as session:
            gone = (
                select(col(Device.id))
                .where(or_(col(Device.online).is_(False), col(Device.deleted_at).is_not(None)))
                .scalar_subquery()
            )
            query = (
                select(Message)
                .where(col(Message.status) == MessageStatus.PROCESSING,
                       col(Message.processing_at) <= now - after,
                       col(Message.device_id).in_(gone))
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            messages = list(session.scalars(query))
            for message in messages:
                transition(session, message, MessageStatus.FAILED, now, error_code="TIMEOUT",
                           error_message="The phone holding this message never confirmed it.")
        total += len(messages)
        if len(messages) < batch:
            return total
