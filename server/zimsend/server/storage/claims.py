"""Claiming due messages for a device: the dispatcher's only way to take work off the queue.

A claim is one statement, `WITH due AS (SELECT … LIMIT n) UPDATE … WHERE id IN (SELECT id
FROM due) RETURNING …`, so two dispatchers — threads of one replica or several replicas — never
take the same message:

- PostgreSQL: the inner SELECT locks its rows `FOR UPDATE SKIP LOCKED`; a concurrent claim
  skips them instead of waiting, and gets the next due messages.
- SQLite: run it inside `Database.write()`; `BEGIN IMMEDIATE` makes claims take turns.

Why a CTE and not `WHERE id IN (SELECT … LIMIT n FOR UPDATE SKIP LOCKED)`: PostgreSQL may
plan that subquery on the inner side of a nested loop and re-run it for every outer row; each
re-run skips the rows this very statement has just updated and locks the next ones, so the
claim takes more than `n` messages. A CTE holding `FOR UPDATE` is evaluated exactly once.
(tests/test_storage.py catches the difference.)

The UPDATE's own `status = 'queued'` guard is written as an expression (`still_queued`) that no
index serves: as a plain `status = ?` term, SQLite's planner (which has no statistics here)
preferred reading every queued row through `ix_messages_dispatch (status=?)` to looking up the
claimed ids, so one claim cost O(queued messages) — milliseconds with thousands scheduled.

Order (SPEC §3, DESIGN "Dispatch"): highest priority (lowest number) first, then oldest due;
messages due at the same time (a bulk send) in the dispatch index's order, which is the order
they were queued. No tie-break on `id`: ids are random, and the index does not hold them, so
SQLite sorted every message sharing the due time on each claim.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, NamedTuple

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Executable,
    Select,
    bindparam,
    case,
    or_,
    select,
    update,
)
from sqlmodel import Session, col

from .models import Message, MessageStatus
from .shapes import padded
from .tables import table_of

__all__ = ["ClaimedMessage", "claim_due_messages", "still_queued"]


class ClaimedMessage(NamedTuple):
    """What a claim returns of each message: the columns a SendCommand, the quiet-hours
    check, the send ledger and the dispatch log line read. Plain rows: loading every column
    into an ORM `Message` (a JSON document, a dozen times) was a quarter of a claim's CPU."""

    id: str
    client_id: str
    to: str
    body: str
    sealed_body: str | None
    priority: int
    status: str
    device_id: str | None
    sim_slot: int | None
    segments: int
    encoding: str
    attempts: int
    due_at: dt.datetime
    expires_at: dt.datetime | None
    processing_at: dt.datetime | None
    request_id: str | None


def still_queued() -> ColumnElement[bool]:
    """`status = 'queued'` as a condition no index can serve, for queries that find their rows
    through another index (see the module docstring): SQLite's planner, without statistics,
    otherwise picks the `status` prefix of `ix_messages_dispatch` and reads the whole queue."""
    return case((col(Message.status) == MessageStatus.QUEUED, 1), else_=0) == 1


# The claim's statements, built once per shape (live or test messages, pinning honoured or
# not, with or without a send budget) as Core statements returning `ClaimedMessage` rows:
# built per call through the ORM's bulk UPDATE, a claim was the dispatch round's largest cost
# (docs/benchmarks.md, "What was changed for speed").
_m = table_of(Message).c
_ORDER = (_m.priority, _m.due_at)


def _conditions(test: bool, any_pin: bool) -> list[ColumnElement[bool]]:
    now: BindParameter[dt.datetime] = bindparam("c_now")
    conditions = [
        _m.status == MessageStatus.QUEUED.value,
        _m.client_id == bindparam("c_client_id"),
        _m.test == test,
        _m.due_at <= now,
        or_(_m.expires_at.is_(None), _m.expires_at > now),
    ]
    if not any_pin:
        conditions.append(
            or_(_m.pinned_device_id.is_(None), _m.pinned_device_id == bindparam("c_device_id"))
        )
    return conditions


def _update(target: ColumnElement[bool]) -> Executable:
    claim = (
        update(table_of(Message))
        .where(target, still_queued())
        .values(
            status=MessageStatus.PROCESSING.value,
            device_id=bindparam("c_device_id"),
            processing_at=bindparam("c_now"),
        )
        .returning(*(_m[name] for name in ClaimedMessage._fields))
    )
    return claim


def _shapes(test: bool, any_pin: bool) -> tuple[Executable, Select[Any], Executable]:
    """(claim the first `limit` due, read the first `limit` due for a budget, claim `ids`)."""
    conditions = _conditions(test, any_pin)
    due = (
        select(_m.id)
        .where(*conditions)
        .order_by(*_ORDER)
        .limit(bindparam("c_limit"))
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        .cte("due")
    )
    within = (
        select(_m.id, _m.sim_slot, _m.segments)
        .where(*conditions)
        .order_by(*_ORDER)
        .limit(bindparam("c_limit"))
        .with_for_update(skip_locked=True)
    )
    return (
        _update(_m.id.in_(select(due.c.id))),
        within,
        _update(_m.id.in_(bindparam("c_ids", expanding=True))),
    )


_SHAPES = {
    (test, any_pin): _shapes(test, any_pin) for test in (False, True) for any_pin in (False, True)
}


def claim_due_messages(
    session: Session,
    *,
    client_id: str,
    device_id: str,
    limit: int,
    now: dt.datetime,
    test: bool = False,
    any_pin: bool = False,
    fits: Callable[[int, int], bool] | None = None,
) -> list[ClaimedMessage]:
    """Move up to `limit` due messages of `client_id` to `processing` on `device_id`.

    Due means `queued`, `due_at <= now`, not expired, and either unpinned or pinned to this
    device. `test` selects sandbox messages (for a simulated device) or live ones, never both.
    Returns the claimed messages in dispatch order. Call it inside `Database.write()`; the claim
    is undone if that transaction rolls back. Whether the device is online, enabled and within
    its pacing is the caller's business. `any_pin` ignores pinning: the built-in simulated
    device of a client takes all its test messages, whatever `X-Device-ID` named.

    `fits(sim_slot, parts)` (a phone's send budget, `devicelink.budgets`): the due messages
    are read first (locked on PostgreSQL), in dispatch order, and only those it accepts are
    claimed; once it refuses one, nothing later on that SIM slot is taken (no overtaking).
    """
    if limit <= 0:
        return []
    claim_due, within, claim_ids = _SHAPES[(test, any_pin)]
    params: dict[str, Any] = {
        "c_client_id": client_id,
        "c_device_id": device_id,
        "c_now": now,
        "c_limit": limit,
    }
    session.flush()  # what the ORM's own execution would do first (autoflush)
    connection = session.connection()
    if fits is not None:
        chosen = _within(session, within, params, fits)
        if not chosen:
            return []
        rows = connection.execute(claim_ids, {**params, "c_ids": padded(chosen)})
    else:
        rows = connection.execute(claim_due, params)
    claimed = [ClaimedMessage(*row) for row in rows]
    # RETURNING has no defined order; ties within one claim go by id.
    claimed.sort(key=lambda m: (m.priority, m.due_at, m.id))
    return claimed


def _within(
    session: Session,
    within: Select[Any],
    params: dict[str, Any],
    fits: Callable[[int, int], bool],
) -> list[str]:
    """The ids of the first due messages (at most `limit`) that `fits` accepts."""
    rows = session.connection().execute(within, params)
    chosen: list[str] = []
    refused: set[int] = set()
    for message_id, sim_slot, segments in rows:
        slot = sim_slot or 0
        if slot in refused:
            continue
        if fits(slot, max(1, segments)):
            chosen.append(message_id)
        else:
            refused.add(slot)
    return chosen
