"""An index of messages by due time: `ix_messages_due_at_status (due_at, status)`.

The dispatcher's global scan asks two things of the whole queue, whatever the client: when is
the next scheduled message due, and whose messages became due since the last scan. With only
`ix_messages_dispatch` (status, client_id, test, priority, due_at) both read every queued
row's index entry, so thousands of messages scheduled days ahead cost milliseconds every 50 ms;
with this index the first reads from `now` to the first queued entry and the second only the
messages that became due. `due_at` leads because SQLite's planner, which has no statistics,
chose a `(status, due_at)` index over the dispatch index for the claims too (a range on its
second column looked cheaper than three equalities) and then read every due message.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        "ix_messages_due_at_status",
        "messages",
        ["due_at", "status"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_due_at_status", table_name="messages")
