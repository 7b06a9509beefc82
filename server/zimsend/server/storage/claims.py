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
) -> list[Message]:
    """Move up to `limit` due messages of `client_id` to `processing` on `device_id`.

    Due means `queued`, `due_at <= now`, not expired, and either unpinned or pinned to this
    device. `test` selects sandbox messages (for a simulated device) or live ones, never both.
    Returns the claimed messages in dispatch order. Call it inside `Database.write()`; the claim
    is undone if that transaction rolls back. Whether the device is online, enabled and within
    its pacing is the caller's business. `any_pin` ignores pinning: the built-in simulated
    device of a client takes all its test messages, whatever `X-Device-ID` named.
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
    due = (
        select(col(Message.id))
        .where(*conditions)
        .order_by(col(Message.priority), col(Message.due_at), col(Message.id))
        .limit(limit)
        .with_for_update(skip_locked=True)  # rendered on PostgreSQL only
        .cte("due")
    )
    claim = (
        update(Message)
        .where(col(Message.id).in_(select(due.c.id)), still_queued())
        .values(status=MessageStatus.PROCESSING, device_id=device_id, processing_at=now)
        .returning(Message)
        .execution_options(synchronize_session=False, populate_existing=True)
    )
    claimed = list(session.scalars(claim))
    # RETURNING has no defined order.
    claimed.sort(key=lambda m: (m.priority, m.due_at, m.id))
    return claimed
