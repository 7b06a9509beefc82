"""A throwaway PostgreSQL server for the test suite: the product's `local_postgres` (the one
`zimsend up --postgres` runs) in a temporary directory, ephemeral (127.0.0.1, a free port,
durability off), removed with every trace on `stop()`.

One server per test session (per xdist worker). Each test that needs a database gets a fresh
one (`create_database`), which is much cheaper than a server.
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path

import psycopg

from zimsend.server.local_postgres import LocalPostgres, PostgresNotInstalled, find_bindir

__all__ = ["PostgresNotInstalled", "PostgresServer", "find_bindir"]


class PostgresServer(LocalPostgres):
    """A running PostgreSQL in a temporary directory; `stop()` (or the context manager)
    removes it."""

    def __init__(self) -> None:
        super().__init__(Path(tempfile.mkdtemp(prefix="zimsend-pg-")), ephemeral=True)

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its SQLAlchemy URL."""
        name = f"test_{secrets.token_hex(6)}"
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            conn.execute(sql)
        return self.url(name)

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)
