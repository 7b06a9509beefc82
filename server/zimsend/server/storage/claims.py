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

Order (SPEC §3, DESIGN "Dispatch"): highest priority (lowest number) first, then oldest due.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from sqlalchemy import ColumnElement, case, or_, select, update
from sqlmodel import Session, col

from .models import Message, MessageStatus

__all__ = ["claim_due_messages", "still_queued"]


def still_queued() -> ColumnElement[bool]:
    """`status = 'queued'` as a condition no index can serve, for queries that find their rows
    through another index (see the module docstring): SQLite's planner, without statistics,
    otherwise picks the `status` prefix of `ix_messages_dispatch` and reads the whole queue."""
    return case((col(Message.status) == MessageStatus.QUEUED, 1), else_=0) == 1


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
) -> list[Message]:
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
    conditions = [
        col(Message.status) == MessageStatus.QUEUED,
        col(Message.client_id) == client_id,
        col(Message.test) == test,
        col(Message.due_at) <= now,
        or_(col(Message.expires_at).is_(None), col(Message.expires_at) > now),
    ]
    if not any_pin:
        conditions.append(
            or_(col(Message.pinned_device_id).is_(None), col(Message.pinned_device_id) == device_id)
        )
    order = (col(Message.priority), col(Message.due_at), col(Message.id))
    if fits is not None:
        chosen = _within(session, conditions, order, limit, fits)
        if not chosen:
            return []
        target = col(Message.id).in_(chosen)
    else:
        due = (
            select(col(Message.id))
            .where(*conditions)
            .order_by(*order)
            .limit(limit)
            .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
            .cte("due")
        )
        target = col(Message.id).in_(select(due.c.id))
    claim = (
        update(Message)
        .where(target, still_queued())
        .values(status=MessageStatus.PROCESSING, device_id=device_id, processing_at=now)
        .returning(Message)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    claimed = list(session.scalars(claim))
    # RETURNING has no defined order.
    claimed.sort(key=lambda m: (m.priority, m.due_at, m.id))
    return claimed


def _within(
    session: Session, conditions: list[ColumnElement[bool]], order: tuple[Any, ...], limit: int,
    fits: Callable[[int, int], bool],
) -> list[str]:
    """The ids of the first due messages (at most `limit`) that `fits` accepts."""
    rows = session.execute(
        select(col(Message.id), col(Message.sim_slot), col(Message.segments))
        .where(*conditions).order_by(*order).limit(limit)
        .with_for_update(skip_locked=True)
    )
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
