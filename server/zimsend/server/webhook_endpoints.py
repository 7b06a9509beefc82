"""Webhook endpoints and their logs: what the WebhookService RPCs do to the database.

Synchronous (called from the server's thread pool), one transaction per operation, every query
scoped by `client_id`: another client's endpoint or event answers exactly like a missing one.
Validation errors are `ApiError`s naming the field, so the RPC layer only converts.

Deleting an endpoint is a soft delete (`deleted_at`): its past attempts stay in the logs with
their `webhook_id`, and the worker stops targeting it at once (targets are computed at each
attempt, not when the event is written).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import Session, col, select

from zimsend.server.accounts.credentials import encrypt_secret, new_id, new_webhook_secret
from zimsend.server.errors import ApiError, ErrorCode, FieldViolation, violations_error
from zimsend.server.sending.one_message import MAX_MESSAGE_ID_CHARS
from zimsend.server.storage import (
    Database,
    OutboxEvent,
    OutboxStatus,
    WebhookDelivery,
    WebhookEndpoint,
    get_for_client,
    utcnow,
)
from zimsend.server.webhook_delivery.events import EVENT_TYPES, TEST_EVENT, outbox_event
from zimsend.server.webhook_delivery.signing import SECRET_PREFIX, standard_webhooks_key
from zimsend.server.webhook_delivery.urls import WebhookUrlError, check_webhook_url

__all__ = [
    "MAX_ENDPOINTS_PER_CLIENT",
    "LogEntry",
    "NewEndpoint",
    "Page",
    "configure",
    "delete",
    "list_endpoints",
    "list_logs",
    "queue_test_event",
    "redeliver",
]

MIN_SECRET_LENGTH = 16
MAX_SECRET_LENGTH = 256
MAX_ENDPOINTS_PER_CLIENT = 20
MAX_PAGE_SIZE = 100
DEFAULT_PAGE_SIZE = 50


@dataclass(frozen=True)
class NewEndpoint:
    endpoint: WebhookEndpoint
    secret: str  # shown once


@dataclass(frozen=True)
class LogEntry:
    """One delivery attempt and the message its event is about (None: about no message)."""

    delivery: WebhookDelivery
    message_id: str | None


@dataclass(frozen=True)
class Page:
    logs: list[LogEntry]
    page: int
    per_page: int
    total_items: int

    @property
    def total_pages(self) -> int:
        return math.ceil(self.total_items / self.per_page) if self.total_items else 0


def configure(
    db: Database,
    pepper: bytes,
    client_id: str,
    *,
    url: str,
    events: list[str],
    secret: str,
    allow_insecure: bool,
) -> NewEndpoint:
    """Validate and store a new endpoint; every bad field is reported at once."""
    problems: list[FieldViolation] = []
    try:
        url = check_webhook_url(url, allow_insecure=allow_insecure)
    except WebhookUrlError as exc:
        raise ApiError.invalid(ErrorCode.INVALID_WEBHOOK_URL, "url", str(exc)) from None
    chosen = _check_events(events, problems)
    if secret:
        _check_secret(secret, problems)
    if problems:
        raise violations_error(ErrorCode.INVALID_REQUEST, problems)
    secret = secret or new_webhook_secret()
    endpoint_id = new_id("wh")
    endpoint = WebhookEndpoint(
        id=endpoint_id,
        client_id=client_id,
        url=url,
        events=chosen,
        secret_encrypted=encrypt_secret(pepper, secret, bound_to=endpoint_id),
    )
    with db.write() as session:
        active = session.exec(
            select(func.count())
            .select_from(WebhookEndpoint)
            .where(
                col(WebhookEndpoint.client_id) == client_id,
                col(WebhookEndpoint.deleted_at).is_(None),
            )
        ).one()
        if active >= MAX_ENDPOINTS_PER_CLIENT:
            raise ApiError(
                ErrorCode.INVALID_REQUEST,
                f"At most {MAX_ENDPOINTS_PER_CLIENT} webhooks per client; delete one first "
                "(DELETE /v1/webhooks/{webhook_id}).",
            )
        session.add(endpoint)
    return NewEndpoint(endpoint, secret)


def _check_events(events: list[str], problems: list[FieldViolation]) -> list[str]:
    if not events:
        problems.append(
            FieldViolation("events", f"give at least one event type: {', '.join(EVENT_TYPES)}.")
        )
        return []
    chosen: list[str] = []
    for index, name in enumerate(events):
        name = name.strip()
        if name not in EVENT_TYPES:
            hint = (
                " (test events are always delivered by POST /v1/webhooks/{webhook_id}/test)"
                if name == TEST_EVENT
                else ""
            )
            problems.append(
                FieldViolation(
                    f"events[{index}]",
                    f"unknown event type {name!r}{hint}; allowed: {', '.join(EVENT_TYPES)}.",
                )
            )
        elif name not in chosen:
            chosen.append(name)
    return chosen


def _check_secret(secret: str, problems: list[FieldViolation]) -> None:
    if not MIN_SECRET_LENGTH <= len(secret) <= MAX_SECRET_LENGTH:
        problems.append(
            FieldViolation(
                "secret",
                f"must be {MIN_SECRET_LENGTH}-{MAX_SECRET_LENGTH} characters (got {len(secret)}), "
                "or omitted to have one generated.",
            )
        )
    elif any(not c.isprintable() or c.isspace() for c in secret):
        problems.append(FieldViolation("secret", "must not contain spaces or control characters."))
    elif secret.startswith(SECRET_PREFIX):
        try:
            key = standard_webhooks_key(secret)
        except ValueError as exc:
            problems.append(FieldViolation("secret", f"{exc} (Standard Webhooks format)."))
        else:
            if len(key) < MIN_SECRET_LENGTH:
                problems.append(
                    FieldViolation(
                        "secret",
                        f"a whsec_ secret must carry at least {MIN_SECRET_LENGTH} bytes of "
                        "base64 key.",
                    )
                )


def list_endpoints(db: Database, client_id: str) -> list[WebhookEndpoint]:
    with db.session() as session:
        return list(
            session.exec(
                select(WebhookEndpoint)
                .where(
                    col(WebhookEndpoint.client_id) == client_id,
                    col(WebhookEndpoint.deleted_at).is_(None),
                )
                .order_by(col(WebhookEndpoint.created_at), col(WebhookEndpoint.id))
            )
        )


def _live_endpoint(session: Session, client_id: str, webhook_id: str) -> WebhookEndpoint:
    endpoint = (
        get_for_client(session, WebhookEndpoint, webhook_id, client_id) if webhook_id else None
    )
    if endpoint is None or endpoint.deleted_at is not None:
        raise ApiError.invalid(
            ErrorCode.WEBHOOK_NOT_FOUND,
            "webhook_id",
            f"No webhook {webhook_id!r} for this client (see GET /v1/webhooks).",
        )
    return endpoint


def delete(db: Database, client_id: str, webhook_id: str) -> WebhookEndpoint:
    with db.write() as session:
        endpoint = _live_endpoint(session, client_id, webhook_id)
        endpoint.deleted_at = utcnow()
        endpoint.status = "deleted"
        session.add(endpoint)
    return endpoint


def queue_test_event(db: Database, client_id: str, webhook_id: str) -> OutboxEvent:
    """A `webhook.test` event for one endpoint; the worker delivers it like any other."""
    with db.write() as session:
        endpoint = _live_endpoint(session, client_id, webhook_id)
        now = utcnow()
        event = outbox_event(
            client_id=client_id,
            event_type=TEST_EVENT,
            now=now,
            data={
                "webhook_id": endpoint.id,
                "message": "Test event from ZimSend: your endpoint is reachable and the "
                "signature can be verified.",
            },
        )
        session.add(event)
    return event


def redeliver(db: Database, client_id: str, event_id: str) -> OutboxEvent:
    """Queue a `failed` event again with a fresh attempt schedule, under the same id.

    Targets that already answered 2xx for this event are not sent it again.
    """
    with db.write() as session:
        event = get_for_client(session, OutboxEvent, event_id, client_id) if event_id else None
        if event is None:
            raise ApiError.invalid(
                ErrorCode.EVENT_NOT_FOUND,
                "event_id",
                f"No event {event_id!r} for this client (event ids are in GET /v1/webhooks/logs).",
            )
        if event.status != OutboxStatus.FAILED:
            raise ApiError.invalid(
                ErrorCode.INVALID_REQUEST,
                "event_id",
                f"Only failed events can be redelivered; this one is {event.status}.",
            )
        now = utcnow()
        event.status = OutboxStatus.PENDING
        event.attempts = 0
        event.next_attempt_at = now
        event.locked_until = None
        event.claimed_by = None
        event.last_error = None
        session.add(event)
    return event


def list_logs(
    db: Database,
    client_id: str,
    page: int | None = None,
    limit: int | None = None,
    *,
    webhook_id: str = "",
    event_id: str = "",
    message_id: str = "",
) -> Page:
    """Delivery attempts, newest first, each with its event's message. `page` default 1,
    `limit` default 50 (None: not given); an explicit 0 is refused like history's, not taken
    for the default. The filters narrow like history's: an id this client does not have
    gives an empty page, not an error; only a `message_id` that cannot be an id is refused,
    as the message endpoints refuse it."""
    problems = []
    if page is not None and page < 1:
        problems.append(FieldViolation("page", f"must be 1 or more (got {page})"))
    if limit is not None and not 1 <= limit <= MAX_PAGE_SIZE:
        problems.append(FieldViolation("limit", f"must be 1-{MAX_PAGE_SIZE} (got {limit})"))
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        problems.append(
            FieldViolation(
                "message_id",
                f"must be a message id such as msg_1234567890abcdef, at most "
                f"{MAX_MESSAGE_ID_CHARS} characters (got {len(message_id)})",
            )
        )
    if problems:
        raise violations_error(ErrorCode.INVALID_REQUEST, problems)
    page = page or 1
    limit = limit or DEFAULT_PAGE_SIZE
    filters = [col(WebhookDelivery.client_id) == client_id]
    if webhook_id:
        filters.append(col(WebhookDelivery.webhook_id) == webhook_id)
    if event_id:
        filters.append(col(WebhookDelivery.event_id) == event_id)
    joined = select(WebhookDelivery, col(OutboxEvent.message_id)).join(
        OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id)
    )
    counted = select(func.count()).select_from(WebhookDelivery)
    if message_id:
        # The (client_id, message_id) index finds the message's few events.
        filters += [
            col(OutboxEvent.client_id) == client_id,
            col(OutboxEvent.message_id) == message_id,
        ]
        counted = counted.join(OutboxEvent, col(OutboxEvent.id) == col(WebhookDelivery.event_id))
    with db.session() as session:
        total = session.exec(counted.where(*filters)).one()
        rows = session.exec(
            joined.where(*filters)
            .order_by(col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
            .offset((page - 1) * limit)
            .limit(limit)
        ).all()
    return Page([LogEntry(delivery, about) for delivery, about in rows], page, limit, int(total))
