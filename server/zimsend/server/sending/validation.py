"""Whole send requests, checked before anything is written (SPEC.md §3).

`validate_send`, `validate_bulk` and `validate_personalized` check every field and collect
every violation, so one answer lists all that is wrong ("recipients[3]: '+33 12' is not a
valid phone number; message: must be 1-1600 characters (got 1601)"). What comes out is a
`SendPlan`: normalised values (E.164 numbers, priority 1-5, UTC times) and the messages to
create, with their segments and encoding computed once. Bulk requests are atomic because
nothing is written unless the whole plan validates.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Literal

from zimsend.segments import plan as plan_segments
from zimsend.server.errors import ErrorCode
from zimsend.v1 import sms_pb2 as pb

from . import fields
from .fields import MAX_RECIPIENTS, Violations

Kind = Literal["single", "bulk", "personalized"]

# zimsend.segments names encodings as the proto does; storage keeps the documented spelling.
STORAGE_ENCODING = {"GSM7": "GSM-7", "UCS2": "UCS-2"}


@dataclass(frozen=True)
class Draft:
    """One message to create."""

    to: str
    body: str
    segments: int
    encoding: str  # storage spelling: "GSM-7" / "UCS-2"
    meta: dict[str, Any] | None


@dataclass(frozen=True)
class SendPlan:
    """A validated request: what to queue, with which options."""

    kind: Kind
    drafts: list[Draft]
    priority: int
    webhook_url: str | None
    scheduled_at: dt.datetime | None
    sim_slot: int | None = None

    @property
    def immediate(self) -> bool:
        return self.scheduled_at is None


def segment(body: str) -> tuple[int, str]:
    """(segments, storage encoding) of a text."""
    planned = plan_segments(body)
    return planned.count, STORAGE_ENCODING[planned.encoding]


def validate_send(
    request: pb.SendSmsRequest, now: dt.datetime, *, allow_insecure_webhooks: bool
) -> SendPlan:
    v = Violations()
    to = fields.phone(v, "to", request.to)
    body = fields.text(v, "message", request.message)
    options = _options(v, request, now, allow_insecure_webhooks)
    meta = fields.metadata(v, "metadata", _struct(request, "metadata"))
    slot = fields.sim_slot(
        v, "sim_slot", request.sim_slot if request.HasField("sim_slot") else None
    )
    v.raise_if_any()
    assert to is not None
    assert body is not None
    return SendPlan("single", [_draft(to, body, meta)], *options, sim_slot=slot)


def validate_bulk(
    request: pb.SendBulkSmsRequest, now: dt.datetime, *, allow_insecure_webhooks: bool
) -> SendPlan:
    v = Violations()
    numbers: list[str | None] = []
    count = len(request.recipients)
    if count == 0:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "recipients",
            f"is required: 1 to {MAX_RECIPIENTS} phone numbers in international format",
        )
    elif count > MAX_RECIPIENTS:
        # Checking 10,000 numbers one by one would only bury the real problem.
        v.add(
            ErrorCode.TOO_MANY_RECIPIENTS,
            "recipients",
            f"must hold at most {MAX_RECIPIENTS} numbers (got {count}); split them into "
            "several requests",
        )
    else:
        numbers = [
            fields.phone(v, f"recipients[{i}]", raw) for i, raw in enumerate(request.recipients)
        ]
    body = fields.text(v, "message", request.message)
    options = _options(v, request, now, allow_insecure_webhooks)
    meta = fields.metadata(v, "metadata", _struct(request, "metadata"))
    v.raise_if_any()
    assert body is not None
    segments, encoding = segment(body)
    drafts = [Draft(to, body, segments, encoding, meta) for to in numbers if to is not None]
    return SendPlan("bulk", drafts, *options)


def validate_personalized(
    request: pb.SendBulkPersonalizedSmsRequest,
    now: dt.datetime,
    *,
    allow_insecure_webhooks: bool,
) -> SendPlan:
    v = Violations()
    drafts: list[Draft | None] = []
    count = len(request.messages)
    if count == 0:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "messages",
            f"is required: 1 to {MAX_RECIPIENTS} messages, each with to and message",
        )
    elif count > MAX_RECIPIENTS:
        v.add(
            ErrorCode.TOO_MANY_RECIPIENTS,
            "messages",
            f"must hold at most {MAX_RECIPIENTS} messages (got {count}); split them into "
            "several requests",
        )
    else:
        for i, item in enumerate(request.messages):
            to = fields.phone(v, f"messages[{i}].to", item.to)
            body = fields.text(v, f"messages[{i}].message", item.message)
            meta = fields.metadata(v, f"messages[{i}].metadata", _struct(item, "metadata"))
            drafts.append(_draft(to, body, meta) if to and body else None)
    options = _options(v, request, now, allow_insecure_webhooks)
    v.raise_if_any()
    return SendPlan("personalized", [d for d in drafts if d is not None], *options)


def _options(
    v: Violations, request: Any, now: dt.datetime, allow_insecure_webhooks: bool
) -> tuple[int, str | None, dt.datetime | None]:
    """The options every send request shares, in the order the error lists them."""
    priority = fields.priority(v, "priority", int(request.priority))
    when = fields.scheduled_at(v, "scheduled_at", request.scheduled_at, now)
    url = fields.webhook_url(
        v, "webhook_url", request.webhook_url, allow_insecure=allow_insecure_webhooks
    )
    return priority or fields.DEFAULT_PRIORITY, url, when


def _draft(to: str, body: str, meta: dict[str, Any] | None) -> Draft:
    segments, encoding = segment(body)
    return Draft(to, body, segments, encoding, meta)


def _struct(message: Any, name: str) -> Any:
    return getattr(message, name) if message.HasField(name) else None
