"""The suppression list: refusing sends to opted-out numbers, inbound STOP/START, the API.

Numbers are compared in E.164 (the send path normalises recipients with `phonenumbers`; an
inbound sender is normalised the same way, and one that is not an international number — a
short code, an alphanumeric sender — cannot opt out and is only stored as an inbound SMS).

Every change of a number's state writes one event in the same transaction
(`sms.opted_out` / `sms.opted_in`, DESIGN "outbox"): a second STOP from a number already listed
changes nothing and writes nothing, so a receiver sees one event per real change.

Concurrency: adding is an INSERT … ON CONFLICT DO NOTHING and removing a DELETE whose row count
says whether it happened, so two replicas applying the same STOP at once write one event.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import phonenumbers
from sqlalchemy import CursorResult, Select, bindparam, delete, func, select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col

from zimsend.server import logs
from zimsend.server.errors import ApiError, ErrorCode, FieldViolation
from zimsend.server.sending.dates import iso
from zimsend.server.sending.fields import Violations, phone
from zimsend.server.sending.validation import SendPlan
from zimsend.server.storage import OptOut, insert_for, utcnow
from zimsend.server.storage.shapes import padded_chunks
from zimsend.server.storage.tables import table_of
from zimsend.server.webhook_delivery.events import outbox_event

from . import keywords
from .policy import Policy
from .policy import load as load_policy

__all__ = [
    "Listed",
    "add",
    "apply_inbound",
    "list_page",
    "listed_among",
    "number",
    "refuse_numbers",
    "refuse_opted_out",
    "remove",
]

log = logs.get("zimsend.opt_outs")
KEYWORD = "keyword"
API = "api"
_TABLE = table_of(OptOut)
#: Numbers per IN list at most (a power of two; SQLite allows 32,766 variables per statement).
_IN_CHUNK = 1024
#: The single-recipient case (SendSms, OTP, resend): a plain key lookup costs a fraction of an
#: expanding IN, which SQLAlchemy re-renders on every execution.
_LISTED_ONE = select(_TABLE.c.phone_number).where(
    _TABLE.c.client_id == bindparam("client_id"),
    _TABLE.c.phone_number == bindparam("number"),
)


def number(v: Violations, name: str, raw: str) -> str | None:
    """A number as the API takes it (E.164 out); `%2B` is read as `+` (a REST path may carry
    the number URL-encoded, and Envoy leaves reserved characters encoded)."""
    text = raw.strip()
    if text[:3].upper() == "%2B":
        text = "+" + text[3:]
    return phone(v, name, text)


def _field(plan: SendPlan, index: int) -> str:
    if plan.kind == "bulk":
        return f"recipients[{index}]"
    if plan.kind == "personalized":
        return f"messages[{index}].to"
    return "to"


def refuse_opted_out(
    connection: Connection,
    client_id: str,
    plan: SendPlan,
    policy: Policy,
    *,
    operation: str,
    listed: Collection[str] | None = None,
) -> None:
    """RECIPIENT_OPTED_OUT naming every opted-out recipient of a send request, unless none
    is. An OTP (`operation` SendOtp) passes when the client exempts OTPs. `listed`: the
    client's listed numbers among (at least) these recipients, read beforehand in the same
    transaction (the accept lane reads them once per batch: `listed_among`); None reads them."""
    if operation == "SendOtp" and policy.exempt_otp:
        return
    refuse_numbers(
        connection,
        client_id,
        [(_field(plan, i), d.to) for i, d in enumerate(plan.drafts)],
        listed=listed,
    )


def listed_among(connection: Connection, client_id: str, numbers: Collection[str]) -> set[str]:
    """Which of `numbers` (E.164) the client's opt-out list holds: one key lookup for one
    number, an IN list padded to a power of two (in chunks) for more."""
    unique = sorted(set(numbers))
    if not unique:
        return set()
    if len(unique) == 1:
        found = connection.execute(_LISTED_ONE, {"client_id": client_id, "number": unique[0]})
        return set(found.scalars())
    listed: set[str] = set()
    for chunk in padded_chunks(unique, _IN_CHUNK):
        statement, names = _listed_in(len(chunk))
        parameters: dict[str, str] = dict(zip(names, chunk, strict=True))
        parameters["client_id"] = client_id
        listed.update(connection.execute(statement, parameters).scalars())
    return listed


@functools.cache
def _listed_in(size: int) -> tuple[Select[Any], tuple[str, ...]]:
    """The lookup of `size` numbers and its parameter names, built once per size: an
    expanding IN is rendered again on every execution (SQLAlchemy's `_literal_execute_
    expanding_parameter` was 5% of the server's CPU under `zimsend bench`); these are
    compiled once and cached like any other statement."""
    names = tuple(f"n{i}" for i in range(size))
    statement = select(_TABLE.c.phone_number).where(
        _TABLE.c.client_id == bindparam("client_id"),
        _TABLE.c.phone_number.in_([bindparam(name) for name in names]),
    )
    return statement, names


def refuse_numbers(
    connection: Connection,
    client_id: str,
    recipients: list[tuple[str, str]],
    *,
    listed: Collection[str] | None = None,
) -> None:
    """RECIPIENT_OPTED_OUT naming every (field, E.164 number) whose number is listed; the
    whole request is refused (bulk stays atomic: docs/decisions.md). `listed` as in
    `refuse_opted_out`."""
    opted_out = (
        listed_among(connection, client_id, [to for _, to in recipients])
        if listed is None
        else {to for _, to in recipients if to in listed}
    )
    if not opted_out:
        return
    violations = [
        FieldViolation(
            name,
            f"{to} has opted out of this client's messages (it texted a stop "
            "keyword, or was added with POST /v1/opt-outs)",
        )
        for name, to in recipients
        if to in opted_out
    ]
    count = len(violations)
    where = ", ".join(v.field for v in violations[:10]) + (" …" if count > 10 else "")
    raise ApiError(
        ErrorCode.RECIPIENT_OPTED_OUT,
        f"{count} recipient(s) opted out and cannot be sent to ({where}); nothing was queued. "
        "Remove them from the request, or, if the person asked to receive messages again, "
        "DELETE /v1/opt-outs/{phone_number} (a START text does it too)",
        violations,
        metadata={"opted_out": ",".join(sorted(opted_out)[:10])},
    )


def _event(
    session: Session,
    client_id: str,
    kind: str,
    row: dict[str, Any],
    when: dt.datetime,
    inbound_id: str | None,
) -> None:
    stamp = "opted_out_at" if kind == "sms.opted_out" else "opted_in_at"
    session.add(
        outbox_event(
            client_id=client_id,
            event_type=kind,
            now=when,
            data={
                "phone_number": row["phone_number"],
                "source": row["source"],
                "keyword": row.get("keyword"),
                "device_id": row.get("device_id"),
                "inbound_id": inbound_id,
                stamp: iso(when),
            },
        )
    )


def add(
    session: Session,
    client_id: str,
    phone_number: str,
    *,
    source: str,
    keyword: str | None = None,
    device_id: str | None = None,
    inbound_id: str | None = None,
    now: dt.datetime | None = None,
) -> tuple[OptOut, bool]:
    """List `phone_number` (E.164); (the entry, whether it is new). A new entry writes
    `sms.opted_out`. Either way the client's queued non-OTP messages to the number fail
    (`OPTED_OUT`, each with `sms.failed`) in the same transaction: nothing more leaves for
    someone who said stop (docs/decisions.md)."""
    # transitions imports this module (record_inbound applies keywords): import it here.
    from zimsend.server.devicelink.transitions import fail_queued_to_opted_out

    when = now or utcnow()
    row = {
        "client_id": client_id,
        "phone_number": phone_number,
        "source": source,
        "keyword": keyword,
        "device_id": device_id,
        "created_at": when,
    }
    inserted = session.execute(
        insert_for(session, OptOut)
        .values(**row)
        .on_conflict_do_nothing(index_elements=["client_id", "phone_number"])
        .returning(_TABLE.c.phone_number)
    ).first()
    if inserted is not None:
        _event(session, client_id, "sms.opted_out", row, when, inbound_id)
    failed = fail_queued_to_opted_out(session, client_id, phone_number, when)
    if failed:
        log.info("opt_outs.queued_failed", client_id=client_id, count=failed, source=source)
    stored = session.get(OptOut, (client_id, phone_number), populate_existing=True)
    assert stored is not None
    return stored, inserted is not None


def remove(
    session: Session,
    client_id: str,
    phone_number: str,
    *,
    source: str,
    keyword: str | None = None,
    device_id: str | None = None,
    inbound_id: str | None = None,
    now: dt.datetime | None = None,
) -> bool:
    """Unlist `phone_number`; whether it was listed. A removal writes `sms.opted_in`."""
    when = now or utcnow()
    result = session.execute(
        delete(OptOut).where(
            col(OptOut.client_id) == client_id, col(OptOut.phone_number) == phone_number
        )
    )
    assert isinstance(result, CursorResult)  # a DELETE's result
    if not result.rowcount:
        return False
    row = {
        "phone_number": phone_number,
        "source": source,
        "keyword": keyword,
        "device_id": device_id,
    }
    _event(session, client_id, "sms.opted_in", row, when, inbound_id)
    return True


def _sender(raw: str) -> str | None:
    """An inbound sender in E.164, or None when it is not an international number."""
    text = raw.strip()
    if not text.startswith("+"):
        return None
    try:
        parsed = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def apply_inbound(
    session: Session,
    *,
    client_id: str,
    device_id: str,
    sender: str,
    body: str,
    inbound_id: str,
    now: dt.datetime,
) -> str | None:
    """If `body` is one of the client's stop or start keywords, list or unlist `sender`;
    returns "stop"/"start" when it matched (whether or not the list changed)."""
    if len(body) > 200:
        return None
    policy = load_policy(session, client_id)
    said = keywords.match(body, policy.stop_keywords, policy.start_keywords)
    if said is None:
        return None
    number_ = _sender(sender)
    if number_ is None:
        log.info(
            "opt_outs.keyword_from_unusable_sender",
            client_id=client_id,
            device_id=device_id,
            inbound_id=inbound_id,
            keyword=said,
        )
        return None
    word = " ".join(body.split())
    if said == "stop":
        _, changed = add(
            session,
            client_id,
            number_,
            source=KEYWORD,
            keyword=word,
            device_id=device_id,
            inbound_id=inbound_id,
            now=now,
        )
    else:
        changed = remove(
            session,
            client_id,
            number_,
            source=KEYWORD,
            keyword=word,
            device_id=device_id,
            inbound_id=inbound_id,
            now=now,
        )
    log.info(
        "opt_outs.keyword",
        client_id=client_id,
        device_id=device_id,
        inbound_id=inbound_id,
        keyword=said,
        changed=changed,
    )
    return said


@dataclass(frozen=True)
class Listed:
    rows: list[OptOut]
    total: int


def list_page(
    session: Session,
    client_id: str,
    *,
    page: int,
    limit: int,
    phone_number: str | None,
) -> Listed:
    """One page of the client's opt-outs, newest first."""
    where = [col(OptOut.client_id) == client_id]
    if phone_number:
        where.append(col(OptOut.phone_number) == phone_number)
    total = session.scalar(select(func.count()).select_from(OptOut).where(*where)) or 0
    rows = list(
        session.scalars(
            select(OptOut)
            .where(*where)
            .order_by(col(OptOut.created_at).desc(), col(OptOut.phone_number))
            .offset((page - 1) * limit)
            .limit(limit)
        )
    )
    return Listed(rows, int(total))
