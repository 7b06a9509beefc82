"""Alembic environment for ZimSend: the models' metadata, batch mode for SQLite.

Migrations run through `zimsend.server.storage.schema`, which passes an open connection in
`config.attributes["connection"]`. Offline mode (`--sql`) needs `sqlalchemy.url` set.
"""

from __future__ import annotations

from typing import Any

from alembic import context

from zimsend.server.storage.models import metadata

config = context.config
# render_as_batch: SQLite can alter tables only by copying them; batch mode does that for us.
_options: dict[str, Any] = {
    "target_metadata": metadata,
    "render_as_batch": True,
    "compare_type": True,
}


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"), literal_binds=True, **_options
        )
    elif connection is None:
        raise RuntimeError("run migrations with zimsend.server.storage.Database.migrate()")
    else:
        context.configure(connection=connection, **_options)
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
