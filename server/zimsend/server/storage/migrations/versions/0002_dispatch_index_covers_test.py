"""The dispatch index covers `test`: `(status, client_id, test, priority, due_at)`.

Every query on the queue filters on `test` (sandbox and live messages never mix): the claim,
and the accept path's "how many are ahead of this one" count. Without `test` in the index
SQLite read each queued row of the client to check it, so the count grew with the backlog and
was the largest single cost of `SendSms` (`zimsend bench`, docs/benchmarks.md); with it the
count is an index-only scan.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_messages_dispatch", table_name="messages")
    op.create_index(
        "ix_messages_dispatch",
        "messages",
        ["status", "client_id", "test", "priority", "due_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_messages_dispatch", table_name="messages")
    op.create_index(
        "ix_messages_dispatch",
        "messages",
        ["status", "client_id", "priority", "due_at"],
        unique=False,
    )
