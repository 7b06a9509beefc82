"""The worker's side of the outbox: claim due events, find their targets, record attempts.

Synchronous storage code, run by the worker in threads (`trio.to_thread`).

Claiming (the same CTE shape as `storage.claims`; one statement for expired leases, one for
pending events, see `_claim_kinds`): an event is due when it is `pending` and
`next_attempt_at` has passed, or `delivering` under a lease that has expired (its worker died
mid-delivery). The claim sets `delivering`, a lease `locked_until = now + lease` and a
claim token in `claimed_by`.

- PostgreSQL: the CTE's `FOR UPDATE SKIP LOCKED` lets several workers claim side by side without
  ever taking the same row;
- SQLite: `Database.write()` begins with `BEGIN IMMEDIATE`, so claims take turns.

Every later write about the event is conditional on the token: a worker whose lease ran out and
whose event was taken over cannot overwrite the new owner's outcome.

Batching (`zimsend bench`: webhooks were the end-to-end bottleneck, each event paying two
waits for SQLite's write lock): `finish_and_claim` closes any number of finished attempts and
leases the next due events in one write transaction, and `targets_for` reads the targets of a
whole claim in one read. `claim_due_events`, `finish_event` and `targets_of` are the same
functions for one event.

Attempts: `attempts` counts finished attempts. A worker killed mid-attempt leaves it unchanged,
so the re-claimed event is re-tried as the same attempt number (a receiver may then see the
event twice, with the same `event_id`). Each HTTP attempt is a `WebhookDelivery` row, written as
soon as it ends; targets that answered 2xx for an event are not sent it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Integer, and_, bindparam, case, or_, select, update
from sqlmodel import Session, col

from zimsend.server import logs
from zimsend.server.accounts.credentials import decrypt_secret
from zimsend.server.storage import (
    Database,
    OutboxEvent,
    OutboxStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from zimsend.server.storage.inserts import RowInsert
from zimsend.server.storage.tables import table_of
from zimsend.server.webhook_delivery.events import TEST_EVENT
from zimsend.server.webhook_delivery.sender import AttemptOutcome

__all__ = [
    "ClaimedEvent",
    "Finish",
    "Target",
    "claim_due_events",
    "finish_and_claim",
    "finish_event",
    "record_attempt",
    "release_claim",
    "targets_for",
    "targets_of",
]

log = logs.get("zimsend.worker.outbox")


@dataclass(frozen=True)
class ClaimedEvent:
    """An event this worker holds the lease of; `attempt` is the number being made (1-based)."""

    id: str
    client_id: str
    event_type: str
    data: Any
    webhook_url: str | None
    created_at: dt.datetime
    attempt: int
    token: str
    #: The request id of the message the event is about (None for other events): logged.
    request_id: str | None = None


@dataclass(frozen=True)
class Target:
    """Where one copy of an event goes. `secret` is None when none can sign it (`problem`)."""

    url: str
    webhook_id: str | None
    secret: str | None
    problem: str | None = None


@dataclass(frozen=True)
class Finish:
    """How an attempt at `event` ended (see `finish_event` for the fields)."""

    event: ClaimedEvent
    remaining: int
    last_error: str | None
    attempts: Sequence[tuple[Target, AttemptOutcome]] = ()


def _due(now: dt.datetime) -> Any:
    return or_(
        and_(
            col(OutboxEvent.status) == OutboxStatus.PENDING, col(OutboxEvent.next_attempt_at) <= now
        ),
        and_(
            col(OutboxEvent.status) == OutboxStatus.DELIVERING, col(OutboxEvent.locked_until) < now
        ),
    )


def claim_due_events(
    db: Database, *, token: str, limit: int, lease: dt.timedelta, now: dt.datetime
) -> list[ClaimedEvent]:
    """Lease up to `limit` due events, oldest due first (see module docstring)."""
    return finish_and_claim(db, [], schedule=(), now=now, token=token, limit=limit, lease=lease)[1]


def finish_and_claim(
    db: Database,
    finishes: Sequence[Finish],
    *,
    schedule: Sequence[float],
    now: dt.datetime,
    token: str = "",
    limit: int = 0,
    lease: dt.timedelta = dt.timedelta(0),
) -> tuple[list[str | None], list[ClaimedEvent]]:
    """Close `finishes` (each as `finish_event` would), then lease up to `limit` due events
    under `token`, in one write transaction. Returns each finish's new status (None: lease
    lost) and the claimed events, oldest first.

    With nothing to finish, a read first: an idle poll must not take SQLite's single write
    lock every half second."""
    if not finishes:
        if limit <= 0:
            return [], []
        with db.session() as session:
            if (
                session.execute(select(col(OutboxEvent.id)).where(_due(now)).limit(1)).first()
                is None
            ):
                return [], []
    attempt_rows = [_delivery_row(f.event, t, o) for f in finishes for t, o in f.attempts]
    with db.write() as session:
        statuses = _finish(session, finishes, attempt_rows, schedule, now)
        rows: list[Any] = []
        for statement in _CLAIM if limit > 0 else ():
            rows += session.execute(
                statement,
                {
                    "b_now": now,
                    "b_limit": limit - len(rows),
                    "b_until": now + lease,
                    "b_token": token,
                },
            )
            if len(rows) >= limit:
                break
    claimed = [
        ClaimedEvent(
            id=row.id,
            client_id=row.client_id,
            event_type=row.event_type,
            data=row.payload,
            webhook_url=row.webhook_url,
            created_at=row.created_at,
            attempt=row.attempts + 1,
            token=token,
            request_id=row.request_id,
        )
        for row in rows
    ]
    claimed.sort(key=lambda e: (e.created_at, e.id))
    return statuses, claimed


def _claim_statements() -> tuple[Any, Any]:
    """The claim's two statements, built once (bind parameters `b_now`, `b_limit`,
    `b_until`, `b_token`): expired leases first (few: at most what workers had in flight), then
    pending events in `next_attempt_at` order. Two, not one with an OR: the index on (status,
    next_attempt_at) then yields rows already in order and stops at the limit, where the OR
    made SQLite collect and sort every due row on every claim (docs/benchmarks.md).

    The UPDATE checks the condition again as an expression no index serves, as
    `storage.claims.still_queued` does and for the same reason: as plain terms, SQLite's
    planner walked the status index over every pending row instead of looking up the claimed
    ids."""
    table = table_of(OutboxEvent)
    now = bindparam("b_now", type_=table.c.next_attempt_at.type)
    expired = and_(table.c.status == OutboxStatus.DELIVERING, table.c.locked_until < now)
    pending = and_(table.c.status == OutboxStatus.PENDING, table.c.next_attempt_at <= now)
    return _claim(expired, None), _claim(pending, table.c.next_attempt_at)


def _claim(due_now: Any, order: Any) -> Any:
    table = table_of(OutboxEvent)
    due = (
        select(table.c.id)
        .where(due_now)
        .order_by(order)
        .limit(bindparam("b_limit", type_=Integer))
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        .cte("due")
    )
    return (
        update(table)
        .where(table.c.id.in_(select(due.c.id)), case((due_now, 1), else_=0) == 1)
        .values(
            status=OutboxStatus.DELIVERING,
            locked_until=bindparam("b_until", type_=table.c.locked_until.type),
            claimed_by=bindparam("b_token", type_=table.c.claimed_by.type),
        )
        .returning(
            table.c.id,
            table.c.client_id,
            table.c.event_type,
            table.c.payload,
            table.c.webhook_url,
            table.c.created_at,
            table.c.attempts,
            table.c.request_id,
        )
    )


_CLAIM: Final = _claim_statements()


def targets_of(db: Database, pepper: bytes, event: ClaimedEvent) -> list[Target]:
    """Where `event` still has to go: its override URL, or the client's active endpoints
    subscribed to its type (the tested endpoint for `webhook.test`), minus those that already
    answered 2xx for it."""
    return targets_for(db, pepper, [event])[0]


def targets_for(db: Database, pepper: bytes, events: Sequence[ClaimedEvent]) -> list[list[Target]]:
    """`targets_of` for each of `events`, with one read of the endpoints of their clients and
    one of their successful deliveries; each endpoint's secret is decrypted once."""
    if not events:
        return []
    with db.session() as session:
        clients = sorted({e.client_id for e in events})
        endpoints: dict[str, list[WebhookEndpoint]] = {c: [] for c in clients}
        for endpoint in _live_endpoints(session, clients):
            endpoints[endpoint.client_id].append(endpoint)
        done = {
            (row.event_id, row.webhook_id, row.url)
            for row in session.execute(
                select(
                    col(WebhookDelivery.event_id),
                    col(WebhookDelivery.webhook_id),
                    col(WebhookDelivery.url),
                ).where(
                    col(WebhookDelivery.event_id).in_(sorted({e.id for e in events})),
                    col(WebhookDelivery.success).is_(True),
                )
            )
        }
    signers: dict[str, tuple[str | None, str | None]] = {}

    def signing(endpoint: WebhookEndpoint) -> tuple[str | None, str | None]:
        if endpoint.id not in signers:
            signers[endpoint.id] = _signing_secret(pepper, endpoint)
        return signers[endpoint.id]

    out = []
    for event in events:
        live = endpoints[event.client_id]
        if event.webhook_url:
            targets = [_override_target(event.webhook_url, live, signing)]
        else:
            if event.event_type == TEST_EVENT:
                wanted = (
                    str(event.data.get("webhook_id", "")) if isinstance(event.data, dict) else ""
                )
                chosen = [e for e in live if e.id == wanted]
            else:
                chosen = [e for e in live if event.event_type in (e.events or [])]
            targets = [Target(e.url, e.id, *signing(e)) for e in chosen]
        out.append([t for t in targets if (event.id, t.webhook_id, t.url) not in done])
    return out


def _live_endpoints(session: Session, client_ids: list[str]) -> Sequence[WebhookEndpoint]:
    return session.scalars(
        select(WebhookEndpoint)
        .where(
            col(WebhookEndpoint.client_id).in_(client_ids),
            col(WebhookEndpoint.deleted_at).is_(None),
            col(WebhookEndpoint.status) == "active",
        )
        .order_by(col(WebhookEndpoint.created_at).desc(), col(WebhookEndpoint.id))
    ).all()


def _override_target(
    url: str,
    endpoints: Sequence[WebhookEndpoint],
    signing: Callable[[WebhookEndpoint], tuple[str | None, str | None]],
) -> Target:
    """A message's own `webhook_url` is signed with the secret of the client's endpoint at that
    same URL if there is one, else of its most recently configured endpoint. With no endpoint
    there is no secret, and an unsigned delivery is never sent: the attempt fails, saying so."""
    same_url = [e for e in endpoints if e.url == url]
    signers = same_url or list(endpoints)
    if not signers:
        return Target(
            url,
            None,
            None,
            problem=(
                "no signing secret: configure a webhook (POST /v1/webhooks/configure) so that "
                "per-message webhook_url deliveries can be signed, then redeliver"
            ),
        )
    return Target(url, None, *signing(signers[0]))


def _signing_secret(pepper: bytes, endpoint: WebhookEndpoint) -> tuple[str | None, str | None]:
    """(secret, None), or (None, why not)."""
    try:
        return decrypt_secret(pepper, endpoint.secret_encrypted, bound_to=endpoint.id), None
    except ValueError:
        return None, "cannot decrypt the webhook's signing secret (was the server pepper changed?)"


def record_attempt(
    db: Database, event: ClaimedEvent, target: Target, outcome: AttemptOutcome
) -> None:
    """One `WebhookDelivery` row: the logs show it at once, and a 2xx is never re-sent."""
    with db.write() as session:
        _INSERT_DELIVERIES.execute(session.connection(), [_delivery_row(event, target, outcome)])


#: The attempt rows with the driver's executemany (`RowInsert`): SQLAlchemy's per-row
#: parameter building was about half of a cycle's CPU inside the write lock.
_INSERT_DELIVERIES: Final = RowInsert(
    table_of(WebhookDelivery),
    (
        "client_id",
        "event_id",
        "webhook_id",
        "event_type",
        "url",
        "attempt",
        "success",
        "response_status",
        "response_time_ms",
        "error",
        "created_at",
    ),
)


def _delivery_row(event: ClaimedEvent, target: Target, outcome: AttemptOutcome) -> tuple[Any, ...]:
    """One attempt row in `_INSERT_DELIVERIES.columns` order."""
    return (
        event.client_id,
        event.id,
        target.webhook_id,
        event.event_type,
        target.url,
        event.attempt,
        outcome.success,
        outcome.status,
        outcome.elapsed_ms,
        outcome.error,
        outcome.at,
    )


def finish_event(
    db: Database,
    event: ClaimedEvent,
    *,
    remaining: int,
    last_error: str | None,
    schedule: Sequence[float],
    now: dt.datetime,
    attempts: Sequence[tuple[Target, AttemptOutcome]] = (),
) -> str | None:
    """Close the attempt: `delivered` when no target is left (`remaining == 0`), `failed` after
    the last attempt of the schedule, else `pending` until `now + schedule[attempt]` (each
    entry is the delay before that attempt). Returns the new status, or None when the lease
    had been taken over by another worker (the event is not updated then).

    `attempts` are `record_attempt` rows written in the same transaction (always, like
    `record_attempt` itself). The worker passes its single attempt here when an event has
    one target: one write per delivery instead of two (`zimsend bench`: webhooks were the
    end-to-end bottleneck), and nothing is lost — until that commit the event is still
    leased, exactly as between a POST and its `record_attempt`."""
    finish = Finish(event, remaining, last_error, tuple(attempts))
    return finish_and_claim(db, [finish], schedule=schedule, now=now)[0][0]


def _finish(
    session: Session,
    finishes: Sequence[Finish],
    attempt_rows: list[tuple[Any, ...]],
    schedule: Sequence[float],
    now: dt.datetime,
) -> list[str | None]:
    """The attempt rows, then one executemany per outcome kind (`_FINISH`) for the events
    this worker still holds — found by one locking read, so an event taken over by another
    worker is left alone and reported as None (a lease lost). Per-event ORM UPDATEs were a
    fifth of the worker's CPU under `zimsend bench`, inside the write lock the server waits for.
    """
    _INSERT_DELIVERIES.execute(session.connection(), attempt_rows)
    if not finishes:
        return []
    table = table_of(OutboxEvent)
    holders = dict(
        session.execute(  # FOR UPDATE on PostgreSQL; SQLite: under BEGIN IMMEDIATE
            select(table.c.id, table.c.claimed_by)
            .where(table.c.id.in_([f.event.id for f in finishes]))
            .with_for_update()
        ).all()
    )
    updates: dict[OutboxStatus, list[dict[str, Any]]] = {}
    statuses: list[str | None] = []
    for finish in finishes:
        event = finish.event
        if holders.get(event.id) != event.token:
            log.warning("outbox.lease_lost", event_id=event.id, attempt=event.attempt)
            statuses.append(None)
            continue
        values: dict[str, Any] = {
            "b_id": event.id,
            "b_token": event.token,
            "b_attempts": event.attempt,
            "b_last_error": finish.last_error,
        }
        if finish.remaining == 0:
            status, values["b_at"] = OutboxStatus.DELIVERED, now
        elif event.attempt >= len(schedule):
            status = OutboxStatus.FAILED
        else:
            status = OutboxStatus.PENDING
            values["b_at"] = now + dt.timedelta(seconds=schedule[event.attempt])
        updates.setdefault(status, []).append(values)
        statuses.append(str(status))
    for status, params in updates.items():
        session.execute(_FINISH[status], params)
    return statuses


def _finish_statements() -> dict[OutboxStatus, Any]:
    """One prebuilt UPDATE per outcome kind, for executemany (`b_at` is `delivered_at` or
    `next_attempt_at`)."""
    table = table_of(OutboxEvent)
    common: dict[str, Any] = {
        "attempts": bindparam("b_attempts"),
        "locked_until": None,
        "claimed_by": None,
        "last_error": bindparam("b_last_error"),
    }
    mine = update(table).where(
        table.c.id == bindparam("b_id"), table.c.claimed_by == bindparam("b_token")
    )
    return {
        OutboxStatus.DELIVERED: mine.values(
            **common, status=OutboxStatus.DELIVERED, delivered_at=bindparam("b_at")
        ),
        OutboxStatus.FAILED: mine.values(**common, status=OutboxStatus.FAILED),
        OutboxStatus.PENDING: mine.values(
            **common, status=OutboxStatus.PENDING, next_attempt_at=bindparam("b_at")
        ),
    }


_FINISH: Final = _finish_statements()


def release_claim(db: Database, event: ClaimedEvent, now: dt.datetime) -> None:
    """Give an unfinished event back at once (graceful stop), as if the attempt never began."""
    with db.write() as session:
        session.execute(
            update(OutboxEvent)
            .where(col(OutboxEvent.id) == event.id, col(OutboxEvent.claimed_by) == event.token)
            .values(
                status=OutboxStatus.PENDING, next_attempt_at=now, locked_until=None, claimed_by=None
            )
            .execution_options(synchronize_session=False)
        )
