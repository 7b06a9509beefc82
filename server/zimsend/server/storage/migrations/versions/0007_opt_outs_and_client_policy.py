"""Opt-outs, quiet hours and per-client delivery policy (issue 16 items 3, 4).

- `client_policies`: one row per client that changed its policy (stop/start keywords, the OTP
  exemption, quiet hours); a client without one has the defaults.
- `opt_outs`: the client's suppression list, keyed by (client, E.164 number).
- `messages.held_until`, `messages.hold_reason`: a message accepted inside the recipient's
  quiet hours, whose `due_at` was moved to the window's end. Nullable: older rows were never
  held.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "client_policies",
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("stop_keywords", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("start_keywords", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("exempt_otp", sa.Boolean(), nullable=False),
        sa.Column("quiet_hours_enabled", sa.Boolean(), nullable=False),
        sa.Column("quiet_hours_start", sa.String(), nullable=False),
        sa.Column("quiet_hours_end", sa.String(), nullable=False),
        sa.Column("quiet_hours_time_zone", sa.String(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_client_policies_client_id_clients")
        ),
        sa.PrimaryKeyConstraint("client_id", name=op.f("pk_client_policies")),
    )
    op.create_table(
        "opt_outs",
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("phone_number", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("keyword", sa.String(), nullable=True),
        sa.Column("device_id", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["client_id"], ["clients.id"], name=op.f("fk_opt_outs_client_id_clients")
        ),
        sa.PrimaryKeyConstraint("client_id", "phone_number", name=op.f("pk_opt_outs")),
    )
    op.create_index(
        "ix_opt_outs_client_id_created_at", "opt_outs", ["client_id", "created_at"], unique=False
    )
    op.add_column("messages", sa.Column("held_until", sa.DateTime(timezone=True), nullable=True))
    op.add_column("messages", sa.Column("hold_reason", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("hold_reason")
        batch.drop_column("held_until")
    op.drop_index("ix_opt_outs_client_id_created_at", table_name="opt_outs")
    op.drop_table("opt_outs")
    op.drop_table("client_policies")
