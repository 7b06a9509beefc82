"""Request ids: `messages.request_id` and `outbox_events.request_id`.

One id follows a message from the REST call to the phone and the webhook (issue 15 item 4):
Envoy's `x-request-id` (or one the server makes for a direct gRPC call) is stored with the
message when it is queued, copied onto the `sms.*` events its status changes write, and logged
at the accept, the dispatch, each applied report and each webhook delivery. Nullable: rows
written before this revision have none.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("request_id", sa.String(), nullable=True))
    op.add_column("outbox_events", sa.Column("request_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox_events") as batch:
        batch.drop_column("request_id")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("request_id")
