"""Wake-ups across processes on PostgreSQL: NOTIFY at commit of new work (issue 17).

Two triggers, PostgreSQL only (SQLite has one process writing; its wake-ups stay in-process):
- a message becoming `queued` and due within 2 s (inserted, re-queued, or its `due_at` moved)
  notifies `zimsend_work` with its client id, so the dispatcher of every server replica rounds
  for that client's idle phones at once instead of at its next poll;
- any insert into `outbox_events` notifies `zimsend_outbox` (one per statement), so a worker
  claims the new events at once instead of at its next poll.
NOTIFY is transactional: it is delivered when the writing transaction commits, never for a
rolled-back one, and PostgreSQL folds identical notifications of one transaction into one.
Listening: `storage.wakeups`. The channel names are `wakeups.WORK_CHANNEL` / `OUTBOX_CHANNEL`.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: How soon a queued message must be due to wake the dispatchers (state.ANNOUNCE_HORIZON: later
#: ones are found by the dispatchers' periodic scan).
_HORIZON = "2 seconds"

_UPGRADE = (
    """CREATE FUNCTION zimsend_notify_work() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('zimsend_work', NEW.client_id);
        RETURN NULL;
    END $$""",
    f"""CREATE TRIGGER messages_notify_work
        AFTER INSERT OR UPDATE OF status, due_at ON messages
        FOR EACH ROW
        WHEN (NEW.status = 'queued' AND NEW.due_at <= now() + interval '{_HORIZON}')
        EXECUTE FUNCTION zimsend_notify_work()""",
    """CREATE FUNCTION zimsend_notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('zimsend_outbox', '');
        RETURN NULL;
    END $$""",
    """CREATE TRIGGER outbox_events_notify
        AFTER INSERT ON outbox_events
        FOR EACH STATEMENT
        EXECUTE FUNCTION zimsend_notify_outbox()""",
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in _UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for statement in (
        "DROP TRIGGER IF EXISTS outbox_events_notify ON outbox_events",
        "DROP FUNCTION IF EXISTS zimsend_notify_outbox()",
        "DROP TRIGGER IF EXISTS messages_notify_work ON messages",
        "DROP FUNCTION IF EXISTS zimsend_notify_work()",
    ):
        op.execute(statement)
