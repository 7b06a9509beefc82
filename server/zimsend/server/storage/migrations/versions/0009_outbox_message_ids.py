"""`outbox_events.message_id`: the message an event is about (issue 14's gap).

`GET /v1/webhooks/logs?message_id=` and the console's message page list one message's own
webhook deliveries through it: deliveries join their event, and the index on
(client_id, message_id) finds a message's events. Nullable: device, inbound, opt-out and test
events are about no message.

Rows written before this revision are backfilled from their JSON payload's `message_id` (the
rule of `storage.models.webhooks.message_id_of`), one UPDATE portable to SQLite
(`json_extract`) and PostgreSQL (`->>`); the outbox only holds the retention window's events,
so the scan is bounded.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_INDEX = "ix_outbox_events_client_id_message_id"


def upgrade() -> None:
    op.add_column("outbox_events", sa.Column("message_id", sa.String(), nullable=True))
    events = sa.table(
        "outbox_events",
        sa.column("payload", sa.JSON(none_as_null=True)),
        sa.column("message_id", sa.String()),
    )
    named = events.c.payload["message_id"].as_string()
    op.execute(events.update().where(named.is_not(None), named != "").values(message_id=named))
    op.create_index(_INDEX, "outbox_events", ["client_id", "message_id"], unique=False)


def downgrade() -> None:
    op.drop_index(_INDEX, table_name="outbox_events")
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("message_id")
