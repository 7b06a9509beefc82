"""What a phone says about its sender: `devices.capabilities`, `network`, `cannot_send_reason`.

Real phones (a USB modem, Termux) can be connected and still unable to send (modem unplugged,
SIM PIN, no network). Heartbeats now say so, and the accept path reads it from the device row
(`presence.is_online`), so it is stored with the rest of the presence. `capabilities` is what
the hello announced (which reports the sender can make at all), shown on GET /v1/devices.

`capabilities` is NOT NULL like `sims`; the server default `{}` fills the existing rows (the
models always write a value, so the default is only for this migration).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "devices",
        sa.Column(
            "capabilities",
            sa.JSON(none_as_null=True),
            nullable=False,
            server_default=sa.text("'{}'"),
        ),
    )
    op.add_column("devices", sa.Column("network", sa.String(), nullable=True))
    op.add_column("devices", sa.Column("cannot_send_reason", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("devices") as batch:
        batch.drop_column("cannot_send_reason")
        batch.drop_column("network")
        batch.drop_column("capabilities")
