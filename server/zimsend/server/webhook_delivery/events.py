"""The event types and how producers write an event: the outbox row contract.

Producers (the SMS lifecycle, device presence, inbound SMS, OTP verification) write one
`OutboxEvent` per event **in the same transaction as the state change** that causes it, and
nothing else: the worker does the fan-out, signing, retries and logging. `outbox_event()` here
and `devicelink.transitions.write_event()` both build a correct row; to fill one by hand:

- `id`: `new_id("evt")` — it is the `event_id` on every attempt and in the logs;
- `client_id`: the owner; only that client's endpoints receive it;
- `event_type`: one of `EVENT_TYPES` (or `TEST_EVENT`);
- `payload`: the webhook's `data` object, JSON-ready (strings, numbers, lists, dicts; times as
  RFC 3339 strings, e.g. `rfc3339(message.sent_at)`); SPEC §7 lists the fields per event;
- `webhook_url`: the message's `webhook_url` when it has one, else None. When set, the event
  goes to that URL *instead of* the client's endpoints, whatever their subscriptions;
- `message_id`: `message_id_of(payload)` (the data's `message_id`), so the message's own
  deliveries can be listed (`GET /v1/webhooks/logs?message_id=`);
- leave `status`, `attempts`, `next_attempt_at` (= now: attempt 1 is immediate), `locked_until`
  and `claimed_by` at their defaults. `created_at` is the body's `timestamp`.

A `webhook.test` event (`TestWebhook`) carries the target endpoint in `payload["webhook_id"]`
and goes to that endpoint only.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from zimsend.server.accounts.credentials import new_id
from zimsend.server.storage import OutboxEvent, utcnow
from zimsend.server.storage.models.webhooks import message_id_of

__all__ = ["EVENT_TYPES", "TEST_EVENT", "outbox_event"]

# SPEC §7, then its "Beyond" events. The order is the one listings show.
EVENT_TYPES: Final = (
    "sms.sent",
    "sms.delivered",
    "sms.failed",
    "device.connected",
    "device.disconnected",
    "sms.received",
    "otp.verified",
    "sms.rerouted",
    "sms.delivery_report_missing",
    "sms.opted_out",
    "sms.opted_in",
)
# Not subscribable: TestWebhook sends it to the one endpoint being tested.
TEST_EVENT: Final = "webhook.test"


def outbox_event(
    *,
    client_id: str,
    event_type: str,
    data: dict[str, Any],
    webhook_url: str | None = None,
    now: dt.datetime | None = None,
) -> OutboxEvent:
    """A new event row; `session.add()` it in the transaction that changes the state."""
    if event_type not in EVENT_TYPES and event_type != TEST_EVENT:
        raise ValueError(f"unknown event type {event_type!r}; expected one of {EVENT_TYPES}")
    when = now or utcnow()
    return OutboxEvent(
        id=new_id("evt"),
        client_id=client_id,
        event_type=event_type,
        payload=data,
        webhook_url=webhook_url or None,
        message_id=message_id_of(data),
        created_at=when,
        next_attempt_at=when,
    )
