"""Failover attempts, failure details and per-SIM send budgets (issue 16 items 1, 2, 5).

- `clients.max_send_attempts`: per-client cap on dispatch attempts of one message when a
  phone fails it before it left (None: the server's `max_send_attempts`).
- `messages.reroutes`: automatic re-routes since the last resend; `messages.
  delivery_report_missing_at`: the sweep flagged it (`sent`, no delivery report in time),
  with the index the sweep reads.
- `devices.parts_per_minute|hour|day` (None: server defaults) and `cooling_down_until`.
- `device_sends`: one row per message handed to a phone (the budget ledger, 24 h deep).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("clients", sa.Column("max_send_attempts", sa.Integer(), nullable=True))
    op.add_column(
        "messages", sa.Column("reroutes", sa.Integer(), nullable=False, server_default=sa.text("0"))
    )
    op.add_column(
        "messages",
        sa.Column("delivery_report_missing_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index(
        "ix_messages_report_sweep", "messages", ["status", "delivery_report_missing_at", "sent_at"]
    )
    for name in ("parts_per_minute", "parts_per_hour", "parts_per_day"):
        op.add_column("devices", sa.Column(name, sa.Integer(), nullable=True))
    op.add_column(
        "devices", sa.Column("cooling_down_until", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_table(
        "device_sends",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "device_id",
            sa.String(),
            sa.ForeignKey("devices.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("sim_slot", sa.Integer(), nullable=False),
        sa.Column("handed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("parts", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=False),
    )
    op.create_index(
        "ix_device_sends_device_id_handed_at", "device_sends", ["device_id", "handed_at"]
    )


def downgrade() -> None:
    op.drop_index("ix_device_sends_device_id_handed_at", table_name="device_sends")
    op.drop_table("device_sends")
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("cooling_down_until")
        for name in ("parts_per_day", "parts_per_hour", "parts_per_minute"):
            batch.drop_column(name)
    op.drop_index("ix_messages_report_sweep", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("delivery_report_missing_at")
        batch.drop_column("reroutes")
    with op.batch_alter_table("clients") as batch:
        batch.drop_column("max_send_attempts")
