"""The worker's side of the outbox: claim due events, find their targets, record attempts.

Synchronous storage code, run by the worker in threads (`trio.to_thread`).

Claiming (one statement, the same CTE shape as `storage.claims`): an event is due when it is
`pending` and `next_attempt_at` has passed, or `delivering` under a lease that has expired (its
worker died mid-delivery). The claim sets `delivering`, a lease `locked_until = now + lease` and a
claim token in `claimed_by`.

- PostgreSQL: the CTE's `FOR UPDATE SKIP LOCKED` lets several workers claim side by side without
  ever taking the same row;
- SQLite: `Database.write()` begins with `BEGIN IMMEDIATE`, so claims take turns.

Every later write about the event is conditional on the token: a worker whose lease ran out and
whose event was taken over cannot overwrite the new owner's outcome.

Attempts: `attempts` counts finished attempts. A worker killed mid-attempt leaves it unchanged,
so the re-claimed event is re-tried as the same attempt number (a receiver may then see the
event twice, with the same `event_id`). Each HTTP attempt is a `WebhookDelivery` row, written as
soon as it ends; targets that answered 2xx for an event are not sent it again.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select, update
from sqlmodel import Session, col

from zimsend.server import logs
from zimsend.server.secrets import decrypt_secret
from zimsend.server.storage import (
    Database,
    OutboxEvent,
    OutboxStatus,
    WebhookDelivery,
    WebhookEndpoint,
)
from zimsend.server.webhook_delivery.events import TEST_EVENT
from zimsend.server.webhook_delivery.sender import AttemptOutcome

__all__ = [
    "ClaimedEvent",
    "Target",
    "claim_due_events",
    "finish_event",
    "record_attempt",
    "release_claim",
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


@dataclass(frozen=True)
class Target:
    """Where one copy of an event goes. `secret` is None when none can sign it (`problem`)."""

    url: str
    webhook_id: str | None
    secret: str | None
    problem: str | None = None


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
    if limit <= 0:
        return []
    # A read first: an idle poll must not take SQLite's single write lock every half second.
    with db.session() as session:
        if session.execute(select(col(OutboxEvent.id)).where(_due(now)).limit(1)).first() is None:
            return []
    due = (
        select(col(OutboxEvent.id))
        .where(_due(now))
        .order_by(col(OutboxEvent.next_attempt_at), col(OutboxEvent.id))
        .limit(limit)
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        .cte("due")
    )
    claim = (
        update(OutboxEvent)
        .where(col(OutboxEvent.id).in_(select(due.c.id)), _due(now))
        .values(status=OutboxStatus.DELIVERING, locked_until=now + lease, claimed_by=token)
        .returning(OutboxEvent)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    with db.write() as session:
        rows = list(session.scalars(claim))
        claimed = [
            ClaimedEvent(
                id=row.id, client_id=row.client_id, event_type=row.event_type, data=row.payload,
                webhook_url=row.webhook_url, created_at=row.created_at,
                attempt=row.attempts + 1, token=token,
            )
            for row in rows
        ]
    claimed.sort(key=lambda e: (e.created_at, e.id))
    return claimed


def targets_of(db: Database, pepper: bytes, event: ClaimedEvent) -> list[Target]:
    """Where `event` still has to go: its override URL, or the client's active endpoints
    subscribed to its type (the tested endpoint for `webhook.test`), minus those that already
    answered 2xx for it."""
    with db.session() as session:
        endpoints = _live_endpoints(session, event.client_id)
        if event.webhook_url:
            targets = [_override_target(pepper, event.webhook_url, endpoints)]
        else:
            if event.event_type == TEST_EVENT:
                wanted = str(event.data.get("webhook_id", "")) if isinstance(event.data, dict) else ""
                chosen = [e for e in endpoints if e.id == wanted]
            else:
                chosen = [e for e in endpoints if event.event_type in (e.events or [])]
            targets = [Target(e.url, e.id, *_signing_secret(pepper, e)) for e in chosen]
        done = {
            (row.webhook_id, row.url)
            for row in session.execute(
                select(WebhookDelivery.webhook_id, WebhookDelivery.url).where(
                    col(WebhookDelivery.event_id) == event.id, col(WebhookDelivery.success).is_(True)
                )
            )
        }
    return [t for t in targets if (t.webhook_id, t.url) not in done]


def _live_endpoints(session: Session, client_id: str) -> Sequence[WebhookEndpoint]:
    return session.scalars(
        select(WebhookEndpoint)
        .where(
            col(WebhookEndpoint.client_id) == client_id,
            col(WebhookEndpoint.deleted_at).is_(None),
            col(WebhookEndpoint.status) == "active",
        )
        .order_by(col(WebhookEndpoint.created_at).desc(), col(WebhookEndpoint.id))
    ).all()


def _override_target(pepper: bytes, url: str, endpoints: Sequence[WebhookEndpoint]) -> Target:
    """A message's own `webhook_url` is signed with the secret of the client's endpoint at that
    same URL if there is one, else of its most recently configured endpoint. With no endpoint
    there is no secret, and an unsigned delivery is never sent: the attempt fails, saying so."""
    same_url = [e for e in endpoints if e.url == url]
    signer = (same_url or list(endpoints) or [None])[0]
    if signer is None:
        return Target(url, None, None, problem=(
            "no signing secret: configure a webhook (POST /v1/webhooks/configure) so that "
            "per-message webhook_url deliveries can be signed, then redeliver"
        ))
    return Target(url, None, *_signing_secret(pepper, signer))


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
        session.add(_delivery_row(event, target, outcome))


def _delivery_row(event: ClaimedEvent, target: Target, outcome: AttemptOutcome) -> WebhookDelivery:
    return WebhookDelivery(
        client_id=event.client_id, event_id=event.id, webhook_id=target.webhook_id,
        event_type=event.event_type, url=target.url, attempt=event.attempt,
        success=outcome.success, response_status=outcome.status,
        response_time_ms=outcome.elapsed_ms, error=outcome.error, created_at=outcome.at,
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
    values: dict[str, Any] = {
        "attempts": event.attempt, "locked_until": None, "claimed_by": None, "last_error": last_error,
    }
    if remaining == 0:
        values.update(status=OutboxStatus.DELIVERED, delivered_at=now)
    elif event.attempt >= len(schedule):
        values.update(status=OutboxStatus.FAILED)
    else:
        values.update(
            status=OutboxStatus.PENDING,
            next_attempt_at=now + dt.timedelta(seconds=schedule[event.attempt]),
        )
    with db.write() as session:
        for target, outcome in attempts:
            session.add(_delivery_row(event, target, outcome))
        result = session.execute(
            update(OutboxEvent)
            .where(col(OutboxEvent.id) == event.id, col(OutboxEvent.claimed_by) == event.token)
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 0:
            log.warning("outbox.lease_lost", event_id=event.id, attempt=event.attempt)
            return None
    return str(values["status"])


def release_claim(db: Database, event: ClaimedEvent, now: dt.datetime) -> None:
    """Give an unfinished event back at once (graceful stop), as if the attempt never began."""
    with db.write() as session:
        session.execute(
            update(OutboxEvent)
            .where(col(OutboxEvent.id) == event.id, col(OutboxEvent.claimed_by) == event.token)
            .values(status=OutboxStatus.PENDING, next_attempt_at=now, locked_until=None, claimed_by=None)
            .execution_options(synchronize_session=False)
        )
