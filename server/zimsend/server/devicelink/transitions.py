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

Phone reports, the hot path (two per message), are applied a batch at a time
(`apply_part_reports`): the same rules (`_advance`, `_aggregate_parts`) run in memory on rows
read with Core, and the outcome is written with one statement per table. The sweeps, rare and
happy with the ORM, use `transition` on `Message` objects. Both live here, next to the rules
they share, which is why this module is longer than most.

All functions are synchronous and take an open write session (`Database.write()`), except
`expire_overdue_messages`, which owns its transactions (the worker calls it as it is).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

from sqlalchemy import bindparam, delete, or_, select, update
from sqlmodel import Session, col

from zimsend.server import failures
from zimsend.server.accounts import credentials
from zimsend.server.compliance import opt_outs
from zimsend.server.storage import (
    NO_DEVICE,
    Client,
    Database,
    Device,
    InboundMessage,
    Message,
    MessagePart,
    MessageStatus,
    OutboxEvent,
    OutboxStatus,
    cached_statement,
    insert_for,
)
from zimsend.server.storage.inserts import RowInsert
from zimsend.server.storage.models.webhooks import message_id_of
from zimsend.server.storage.shapes import padded_chunks
from zimsend.server.storage.tables import table_of
from zimsend.server.storage.upserts import add_daily_counts, mark_reports_processed
from zimsend.timestamps import rfc3339

__all__ = [
    "Failover",
    "MessageRow",
    "PartReport",
    "Transition",
    "apply_part_report",
    "apply_part_reports",
    "event_row",
    "expire_overdue_messages",
    "flag_missing_delivery_reports",
    "iso",
    "max_send_attempts",
    "message_event_payload",
    "record_inbound",
    "time_out_stale_processing",
    "transition",
    "write_event",
]

Outcome = Literal["sent", "delivered", "failed"]

_FINAL = frozenset({MessageStatus.DELIVERED, MessageStatus.FAILED, MessageStatus.CANCELLED})
_EVENT = {
    MessageStatus.SENT: "sms.sent",
    MessageStatus.DELIVERED: "sms.delivered",
    MessageStatus.FAILED: "sms.failed",
}
REROUTED_EVENT = "sms.rerouted"
REPORT_MISSING_EVENT = "sms.delivery_report_missing"


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
    """A message status change that was applied (and its events written); `error_code` is
    the failure code of a move to `failed` (or back to `queued`: a re-route), `request_id` the
    message's (for log lines); `cooldown_s` how long the reporting phone must now be given
    nothing (a failure before sending)."""

    message_id: str
    old: str
    new: str
    error_code: str | None = None
    request_id: str | None = None
    cooldown_s: float = 0.0


@dataclass(frozen=True)
class Failover:
    """What a failure before sending does (server settings): the message goes back to the
    queue while its attempts since the last resend stay under the client's maximum
    (`max_attempts` when the client has none), and the phone cools down."""

    max_attempts: int
    cooldown: dt.timedelta
    send_limit_cooldown: dt.timedelta

    def cooldown_for(self, code: str) -> dt.timedelta:
        return self.send_limit_cooldown if code == "SEND_LIMIT" else self.cooldown


def iso(value: dt.datetime | None) -> str | None:
    """A time in webhook `data` (and the events' other payloads): RFC 3339 in UTC, always with
    milliseconds (`2025-01-15T10:30:00.000Z`), as those payloads have always shown it."""
    if value is None:
        return None
    return rfc3339(value, milliseconds=True)


def event_row(
    client_id: str,
    event_type: str,
    payload: dict[str, Any],
    *,
    webhook_url: str | None = None,
    now: dt.datetime,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Every column of a new outbox row (`webhook_delivery.events` has the contract);
    `request_id` is the message's, for the worker's log line; `message_id` is the payload's."""
    return {
        "id": credentials.new_id("evt"),
        "client_id": client_id,
        "event_type": event_type,
        "payload": payload,
        "webhook_url": webhook_url,
        "status": OutboxStatus.PENDING,
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
        "locked_until": None,
        "claimed_by": None,
        "delivered_at": None,
        "last_error": None,
        "request_id": request_id,
        "message_id": message_id_of(payload),
    }


def write_event(
    session: Session,
    client_id: str,
    event_type: str,
    payload: dict[str, Any],
    *,
    webhook_url: str | None = None,
    now: dt.datetime,
    request_id: str | None = None,
) -> OutboxEvent:
    """Add one outbox row (the worker delivers it); `payload` is the webhook body's `data`."""
    event = OutboxEvent(
        **event_row(
            client_id, event_type, payload, webhook_url=webhook_url, now=now, request_id=request_id
        )
    )
    session.add(event)
    return event


@dataclass(slots=True)
class MessageRow:
    """The columns of a message that a report reads or writes, loaded with Core: building
    ORM objects and flushing them through the unit of work was half of the server's CPU end
    to end (`zimsend bench`). `transition` takes this or a `Message` alike."""

    id: str
    client_id: str
    device_id: str | None
    status: str
    to: str
    body: str
    meta: Any
    batch_id: str | None
    webhook_url: str | None
    parts: int | None
    sealed_body: str | None
    sent_at: dt.datetime | None
    delivered_at: dt.datetime | None
    failed_at: dt.datetime | None
    error_code: str | None
    error_message: str | None
    request_id: str | None
    attempts: int
    reroutes: int
    processing_at: dt.datetime | None


@dataclass(slots=True)
class _Part:
    """A `MessagePart` row as plain data (same columns, same defaults)."""

    message_id: str
    part_index: int
    status: str = MessageStatus.PROCESSING
    sent_at: dt.datetime | None = None
    delivered_at: dt.datetime | None = None
    failed_at: dt.datetime | None = None
    error_code: str | None = None
    error_message: str | None = None


_ROW_COLUMNS = tuple(f.name for f in fields(MessageRow))
#: What a report may change on a message.
_WRITTEN = (
    "status",
    "parts",
    "sealed_body",
    "sent_at",
    "delivered_at",
    "failed_at",
    "error_code",
    "error_message",
    "device_id",
    "attempts",
    "reroutes",
    "processing_at",
)
_PART_COLUMNS = tuple(f.name for f in fields(_Part))
_DAY_COLUMN = {MessageStatus.SENT: 0, MessageStatus.DELIVERED: 1, MessageStatus.FAILED: 2}
#: Ids per `IN (…)` when loading a batch's messages (SQLite caps bound parameters); lists are
#: padded to a power of two (`storage.shapes`), so this is one too.
_CHUNK = 512
_Counts = dict[tuple[str, str, dt.date], list[int]]


def message_event_payload(message: Message | MessageRow) -> dict[str, Any]:
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
    payload["attempts"] = message.attempts + 1  # as the API numbers them (sending.views)
    if message.status in (MessageStatus.FAILED, MessageStatus.QUEUED) and message.error_code:
        payload["error"] = failures.error_payload(
            message.error_code, message.error_message, message.device_id
        )
    if message.batch_id:
        payload["batch_id"] = message.batch_id
    return payload


def _advance(
    message: Message | MessageRow,
    new: str,
    now: dt.datetime,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> list[tuple[Transition, dict[str, Any]]]:
    """The rules of `transition`, in memory: each applied step and its event's payload."""
    old = message.status
    if old in _FINAL or old == new:
        return []
    if new == MessageStatus.DELIVERED and old == MessageStatus.PROCESSING:
        return _advance(message, MessageStatus.SENT, now) + _advance(
            message, MessageStatus.DELIVERED, now
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
        # A re-routed message kept its last attempt's failure while queued; it left now.
        message.error_code = message.error_message = None
    elif new == MessageStatus.DELIVERED:
        message.delivered_at = now
    else:
        message.failed_at = now
        message.error_code = error_code or failures.FALLBACK
        message.error_message = error_message or failures.info(message.error_code).message
    if new in _FINAL:
        message.sealed_body = None  # OTP text: no longer needed once final (models docstring)
    failure = message.error_code if new == MessageStatus.FAILED else None
    return [
        (
            Transition(message.id, old, new, failure, message.request_id),
            message_event_payload(message),
        )
    ]


def _tally(counts: _Counts, message: Message | MessageRow, new: str, now: dt.datetime) -> None:
    """Per-day counts (SPEC §4): `sent` counts messages that reached the network,
    `delivered` and `failed` their final outcome."""
    key = (message.client_id, message.device_id or NO_DEVICE, now.astimezone(dt.UTC).date())
    counts.setdefault(key, [0, 0, 0])[_DAY_COLUMN[MessageStatus(new)]] += 1


def transition(
    session: Session,
    message: Message,
    new: str,
    now: dt.datetime,
    *,
    error_code: str | None = None,
    error_message: str | None = None,
) -> list[Transition]:
    """Move `message` to `new` if SPEC §3 allows it; write its event(s) and aggregates.

    `processing → delivered` (a phone that reports delivery before the server stored "sent")
    passes through `sent`, so a webhook consumer always sees `sms.sent` before
    `sms.delivered`. A transition SPEC does not allow (e.g. out of a final status) is ignored:
    late or replayed reports never move a message backwards. Returns what was applied.
    """
    steps = _advance(message, new, now, error_code=error_code, error_message=error_message)
    if not steps:
        return []
    session.add(message)
    counts: _Counts = {}
    for step, payload in steps:
        write_event(
            session,
            message.client_id,
            _EVENT[MessageStatus(step.new)],
            payload,
            webhook_url=message.webhook_url,
            now=now,
            request_id=message.request_id,
        )
        _tally(counts, message, step.new, now)
    add_daily_counts(session, counts)
    return [step for step, _ in steps]


def apply_part_report(
    session: Session,
    *,
    client_id: str,
    device_id: str,
    report: PartReport,
    now: dt.datetime,
    failover: Failover | None = None,
) -> list[Transition]:
    """Apply one phone report, at most once per (device, report id); returns the transitions.

    Reports about a message that is not this device's (another client's, reassigned, unknown)
    are recorded as processed and change nothing: the phone may forget them.
    """
    return apply_part_reports(session, [(client_id, device_id, report)], now=now, failover=failover)


def max_send_attempts(session: Session, client_ids: set[str], default: int) -> dict[str, int]:
    """Each client's `max_send_attempts` (the server's `default` where the client has none)."""
    if not client_ids:
        return {}
    rows = session.execute(
        select(col(Client.id), col(Client.max_send_attempts)).where(
            col(Client.id).in_(sorted(client_ids))
        )
    )
    found = {client_id: value for client_id, value in rows}
    return {c: found.get(c) or default for c in client_ids}


def apply_part_reports(
    session: Session,
    reports: Sequence[tuple[str, str, PartReport]],
    *,
    now: dt.datetime,
    failover: Failover | None = None,
) -> list[Transition]:
    """Apply (client id, device id, report) triples in order, exactly as `apply_part_report`
    one after the other would, with one statement per kind for the whole batch: the
    processed-report marks, one read of the messages (locked) and their parts, then one
    executemany each for the messages, parts, outbox rows and daily counters.

    Why it is the same: every rule runs in memory on the rows as the previous reports of the
    batch left them, under the write lock (`BEGIN IMMEDIATE`; PostgreSQL: the rows are
    locked `FOR UPDATE`, in id order), and only the outcome is written.

    Failover (with `failover`): a failure that provably happened before the SMS left the phone
    (`failures.proto`: `before_send`; for a multi-part message, every part failed so) puts the
    message back in the queue — `sms.rerouted`, one more attempt — while the client's maximum
    allows, and the phone cools down. Any other failure is final, as before.
    """
    fresh = mark_reports_processed(session, [(d, r.report_id) for _, d, r in reports])
    todo: list[tuple[str, str, PartReport]] = []
    for client_id, device_id, report in reports:
        if (device_id, report.report_id) in fresh:
            fresh.discard((device_id, report.report_id))  # a repeat later in the batch: a replay
            todo.append((client_id, device_id, report))
    if not todo:
        return []
    messages = _load_messages(session, {r.message_id for _, _, r in todo})
    parts = _load_parts(
        session, {r.message_id for _, _, r in todo if r.part_count > 0 and r.message_id in messages}
    )
    before = {m.id: _written(m) for m in messages.values()}
    moves: list[Transition] = []
    events: list[dict[str, Any]] = []
    counts: _Counts = {}
    touched: set[tuple[str, int]] = set()
    rerouted: set[str] = set()
    cooling: dict[str, dt.datetime] = {}
    limits: dict[str, int] | None = None
    for client_id, device_id, report in todo:
        message = messages.get(report.message_id)
        if (
            message is None
            or message.client_id != client_id
            or message.device_id != device_id
            or message.status == MessageStatus.QUEUED
        ):  # re-routed: that attempt is over
            continue
        code = failures.normalise(report.error_code)
        target: str | None = report.outcome
        if report.part_count > 0:
            known = parts.setdefault(message.id, {})
            target = _aggregate_parts(known, message, report, code, now)
            touched.add((message.id, report.part_index))
            code = next(
                (
                    p.error_code
                    for _, p in sorted(known.items())
                    if p.status == MessageStatus.FAILED and p.error_code
                ),
                code,
            )
        elif target == MessageStatus.FAILED and failures.info(code).before_send:
            target = _REROUTE
        if target is None:
            continue
        cooldown_s = 0.0
        if target == _REROUTE:
            target = MessageStatus.FAILED
            if failover is not None:
                cooldown = failover.cooldown_for(code)
                cooldown_s = cooldown.total_seconds()
                cooling[device_id] = max(cooling.get(device_id, now), now + cooldown)
                if limits is None:
                    limits = max_send_attempts(
                        session, {c for c, _, _ in todo}, failover.max_attempts
                    )
                if (
                    message.status == MessageStatus.PROCESSING
                    and message.reroutes + 1 < limits[client_id]
                ):
                    step, payload = _reroute(message, code, report.error_message, device_id)
                    events.append(
                        event_row(
                            message.client_id,
                            REROUTED_EVENT,
                            payload,
                            webhook_url=message.webhook_url,
                            now=now,
                            request_id=message.request_id,
                        )
                    )
                    moves.append(
                        Transition(
                            step.message_id,
                            step.old,
                            step.new,
                            code,
                            message.request_id,
                            cooldown_s,
                        )
                    )
                    rerouted.add(message.id)
                    continue
        failed = target == MessageStatus.FAILED
        for step, payload in _advance(
            message,
            target,
            now,
            error_code=code if failed else None,
            error_message=(report.error_message or None) if failed else None,
        ):
            events.append(
                event_row(
                    message.client_id,
                    _EVENT[MessageStatus(step.new)],
                    payload,
                    webhook_url=message.webhook_url,
                    now=now,
                    request_id=message.request_id,
                )
            )
            _tally(counts, message, step.new, now)
            moves.append(
                Transition(
                    step.message_id,
                    step.old,
                    step.new,
                    step.error_code,
                    step.request_id,
                    cooldown_s,
                )
            )
    changed = [(m, _changes(before[m.id], m)) for m in messages.values()]
    _store(
        session,
        [(m, names) for m, names in changed if names],
        [parts[m][i] for m, i in sorted(touched) if m not in rerouted],
        events,
        counts,
    )
    if rerouted:
        part_table = table_of(MessagePart)
        session.execute(delete(part_table).where(part_table.c.message_id.in_(sorted(rerouted))))
    for device_id, until in sorted(cooling.items()):
        current = session.scalar(
            select(col(Device.cooling_down_until)).where(col(Device.id) == device_id)
        )
        if current is None or current < until:
            session.execute(
                update(Device).where(col(Device.id) == device_id).values(cooling_down_until=until)
            )
    return moves


#: `_aggregate_parts`' answer for "every part failed before leaving the phone".
_REROUTE = "reroute"


def _reroute(
    message: MessageRow, code: str, error_message: str, device_id: str
) -> tuple[Transition, dict[str, Any]]:
    """Put a message a phone failed before sending back in the queue (in memory): one more
    attempt; its `device_id` and error stay those of the failed attempt until a phone takes
    it (status shows why it is queued again); the payload names the phone (`rerouted_from`)."""
    old = message.status
    message.status = MessageStatus.QUEUED
    message.attempts += 1
    message.reroutes += 1
    message.error_code = code
    message.error_message = error_message or failures.info(code).message
    message.parts = None
    message.processing_at = message.sent_at = message.failed_at = None
    payload = message_event_payload(message)
    payload["rerouted_from"] = device_id
    return Transition(message.id, old, MessageStatus.QUEUED, code, message.request_id), payload


def _written(message: MessageRow) -> tuple[Any, ...]:
    return tuple(getattr(message, name) for name in _WRITTEN)


def _changes(before: tuple[Any, ...], message: MessageRow) -> tuple[str, ...]:
    """The columns of `_WRITTEN` a batch changed on `message` (empty: nothing to write)."""
    return tuple(
        name for name, old in zip(_WRITTEN, before, strict=True) if getattr(message, name) != old
    )


def _load_messages(session: Session, ids: set[str]) -> dict[str, MessageRow]:
    table = table_of(Message)
    stmt = cached_statement(
        session,
        "reports.load_messages",
        lambda s: (
            select(*(table.c[name] for name in _ROW_COLUMNS))
            .where(table.c.id.in_(bindparam("ids", expanding=True)))
            .order_by(table.c.id)
            .with_for_update()  # PostgreSQL; SQLite's BEGIN IMMEDIATE already excludes writers
        ),
    )
    out: dict[str, MessageRow] = {}
    for chunk in padded_chunks(sorted(ids), _CHUNK):
        for row in session.execute(stmt, {"ids": chunk}):
            out[row.id] = MessageRow(*row)
    return out


def _load_parts(session: Session, ids: set[str]) -> dict[str, dict[int, _Part]]:
    if not ids:
        return {}
    table = table_of(MessagePart)
    stmt = cached_statement(
        session,
        "reports.load_parts",
        lambda s: select(*(table.c[name] for name in _PART_COLUMNS)).where(
            table.c.message_id.in_(bindparam("ids", expanding=True))
        ),
    )
    out: dict[str, dict[int, _Part]] = {}
    for chunk in padded_chunks(sorted(ids), _CHUNK):
        for row in session.execute(stmt, {"ids": chunk}):
            out.setdefault(row.message_id, {})[row.part_index] = _Part(*row)
    return out


def _store(
    session: Session,
    messages: list[tuple[MessageRow, tuple[str, ...]]],
    parts: list[_Part],
    events: list[dict[str, Any]],
    counts: _Counts,
) -> None:
    """Write a batch's outcome: one executemany per table, and for the messages one per set
    of changed columns (a report changes two or three of the twelve a report may: binding
    only those is most of the UPDATE's CPU saved; a batch has a few such sets)."""
    shapes: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    for message, names in sorted(messages, key=lambda item: item[0].id):
        row = {name: getattr(message, name) for name in names}
        row["_id"] = message.id
        shapes.setdefault(names, []).append(row)
    for names, rows in sorted(shapes.items()):
        session.execute(_update_messages(session, names), rows)
    if parts:
        session.execute(
            cached_statement(session, "reports.upsert_parts", _upsert_parts),
            [{name: getattr(p, name) for name in _PART_COLUMNS} for p in parts],
        )
    if events:
        _INSERT_EVENTS.execute(
            session.connection(), [tuple(e[name] for name in _EVENT_COLUMNS) for e in events]
        )
    add_daily_counts(session, counts)


#: The columns of a new outbox row that `event_row` sets to anything but NULL, in the order
#: `_INSERT_EVENTS` binds them (the lease, delivery and error columns start NULL).
_EVENT_COLUMNS = (
    "id",
    "client_id",
    "event_type",
    "payload",
    "webhook_url",
    "status",
    "attempts",
    "created_at",
    "next_attempt_at",
    "request_id",
    "message_id",
)
_INSERT_EVENTS = RowInsert(table_of(OutboxEvent), _EVENT_COLUMNS)


def _update_messages(session: Session, names: tuple[str, ...]) -> Any:
    """`UPDATE messages SET <names> WHERE id = :_id`, built once per set of names."""
    table = table_of(Message)
    return cached_statement(
        session,
        "reports.update_messages:" + ",".join(names),
        lambda _: (
            update(table)
            .where(table.c.id == bindparam("_id"))
            .values({name: bindparam(name) for name in names})
        ),
    )


def _upsert_parts(session: Session) -> Any:
    table = table_of(MessagePart)
    stmt = insert_for(session, table).values({name: bindparam(name) for name in _PART_COLUMNS})
    return stmt.on_conflict_do_update(
        index_elements=["message_id", "part_index"],
        set_={name: stmt.excluded[name] for name in _PART_COLUMNS[2:]},
    )


def _aggregate_parts(
    parts: dict[int, _Part],
    message: MessageRow,
    report: PartReport,
    code: str,
    now: dt.datetime,
) -> str | None:
    """Record one part's outcome in `parts` (all of the message's parts); the message status
    its parts now imply (None: no change)."""
    message.parts = report.part_count
    part = parts.get(report.part_index)
    if part is None:
        part = parts[report.part_index] = _Part(message.id, report.part_index)
    if report.outcome == "failed":
        part.status, part.failed_at = MessageStatus.FAILED, now
        part.error_code, part.error_message = code, report.error_message or None
    elif report.outcome == "delivered" and part.status != MessageStatus.FAILED:
        part.status, part.delivered_at = MessageStatus.DELIVERED, now
        part.sent_at = part.sent_at or now
    elif report.outcome == "sent" and part.status == MessageStatus.PROCESSING:
        part.status, part.sent_at = MessageStatus.SENT, now
    statuses = [p.status for p in parts.values()]
    failed = [p for p in parts.values() if p.status == MessageStatus.FAILED]
    if failed and all(failures.info(p.error_code).before_send for p in failed):
        # Failed before leaving: the message may go to another phone, but only if no part
        # left this one, which is known once every part is reported.
        if any(s in (MessageStatus.SENT, MessageStatus.DELIVERED) for s in statuses):
            return MessageStatus.FAILED
        if len(statuses) < report.part_count or len(failed) < len(statuses):
            return None
        return _REROUTE
    if MessageStatus.FAILED in statuses:
        return MessageStatus.FAILED
    if len(statuses) < report.part_count:
        return None
    if all(s == MessageStatus.DELIVERED for s in statuses):
        return MessageStatus.DELIVERED
    if all(s in (MessageStatus.SENT, MessageStatus.DELIVERED) for s in statuses):
        return MessageStatus.SENT
    return None


def record_inbound(
    session: Session,
    *,
    client_id: str,
    device_id: str,
    report_id: str,
    sender: str,
    body: str,
    sim_slot: int | None,
    received_at: dt.datetime | None,
    now: dt.datetime,
) -> bool:
    """Store an inbound SMS once per (device, report id) and write its `sms.received` event.
    Returns False for a replay."""
    inbound_id = credentials.new_id("in")
    received = received_at or now
    stmt = (
        insert_for(session, InboundMessage)
        .values(
            id=inbound_id,
            client_id=client_id,
            device_id=device_id,
            report_id=report_id,
            from_number=sender,
            body=body,
            sim_slot=sim_slot,
            received_at=received,
            created_at=now,
        )
        .on_conflict_do_nothing(index_elements=["device_id", "report_id"])
        .returning(InboundMessage.id)
    )
    if session.execute(stmt).first() is None:
        return False
    payload = {
        "id": inbound_id,
        "device_id": device_id,
        "from": sender,
        "message": body,
        "sim_slot": sim_slot,
        "received_at": iso(received),
    }
    write_event(session, client_id, "sms.received", payload, now=now)
    # A stop or start keyword also lists or unlists the sender (docs/compliance.md).
    opt_outs.apply_inbound(
        session,
        client_id=client_id,
        device_id=device_id,
        sender=sender,
        body=body,
        inbound_id=inbound_id,
        now=now,
    )
    return True


def fail_queued_to_opted_out(
    session: Session,
    client_id: str,
    phone_number: str,
    now: dt.datetime,
) -> int:
    """Fail (`OPTED_OUT`) the client's `queued` messages to `phone_number`, scheduled and
    held ones included, in the caller's transaction (the one that lists the number), each
    with its `sms.failed` event. OTPs are left alone (their user asked for the code now).
    Reads the client's queued rows (`ix_messages_dispatch`), a STOP being rare. Returns how
    many failed."""
    query = (
        select(Message)
        .where(
            col(Message.status) == MessageStatus.QUEUED,
            col(Message.client_id) == client_id,
            col(Message.to) == phone_number,
            col(Message.sealed_body).is_(None),
        )
        .with_for_update()
    )
    messages = list(session.scalars(query))
    for message in messages:
        transition(session, message, MessageStatus.FAILED, now, error_code=failures.OPTED_OUT)
    return len(messages)


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
                transition(session, message, MessageStatus.FAILED, now, error_code=failures.EXPIRED)
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
                .where(
                    col(Message.status) == MessageStatus.PROCESSING,
                    col(Message.processing_at) <= now - after,
                    col(Message.device_id).in_(gone),
                )
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            messages = list(session.scalars(query))
            for message in messages:
                transition(
                    session,
                    message,
                    MessageStatus.FAILED,
                    now,
                    error_code=failures.TIMEOUT,
                    error_message="The phone holding this message never confirmed it.",
                )
        total += len(messages)
        if len(messages) < batch:
            return total


def flag_missing_delivery_reports(
    db: Database, now: dt.datetime, *, after: dt.timedelta, batch: int = 500
) -> int:
    """Flag `sent` messages without a delivery report for longer than `after`
    (`delivery_report_missing`) and write one `sms.delivery_report_missing` event each.

    The flag is set once (`delivery_report_missing_at`), so the event is too; a report that
    arrives later still moves the message to `delivered` (the flag then no longer shows).
    Batches of `batch`, one transaction each; safe from several processes at once.
    """
    total = 0
    while True:
        with db.write() as session:
            query = (
                select(Message)
                .where(
                    col(Message.status) == MessageStatus.SENT,
                    col(Message.delivery_report_missing_at).is_(None),
                    col(Message.sent_at) <= now - after,
                )
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            messages = list(session.scalars(query))
            for message in messages:
                message.delivery_report_missing_at = now
                session.add(message)
                payload = message_event_payload(message)
                payload["delivery_report_missing"] = True
                write_event(
                    session,
                    message.client_id,
                    REPORT_MISSING_EVENT,
                    payload,
                    webhook_url=message.webhook_url,
                    now=now,
                    request_id=message.request_id,
                )
        total += len(messages)
        if len(messages) < batch:
            return total
