"""Fixtures shared by the whole suite. Keep each section small; add new sections below.

Databases
    postgres_server          session: a PostgreSQL started for this run (tests/_pg.py)
    postgres_url             session: URL of that server's `postgres` maintenance database
    postgres_database_url    a fresh, empty PostgreSQL database
    sqlite_url               a fresh SQLite file under tmp_path
    database_url             a fresh, empty database, parametrized: "sqlite", "postgresql"
    db                       a migrated `Database` on a fresh database, parametrized the same way

Settings
    settings                 `Settings` isolated from the environment, data_dir under tmp_path

PostgreSQL never skips: without its binaries the tests that need it fail, saying how to
install them. Tests on PostgreSQL carry the `postgres` marker (`-m "not postgres"` to
deselect them on purpose).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from _pg import PostgresNotInstalled, PostgresServer

if TYPE_CHECKING:
    from zimsend.server.config import Settings
    from zimsend.server.storage import Database

ENGINES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
TEST_PEPPER = "test-pepper-not-secret-0123456789"


# --- PostgreSQL -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    try:
        server = PostgresServer()
    except PostgresNotInstalled as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.url()


@pytest.fixture
def postgres_database_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()


@pytest.fixture(scope="session")
def _postgres_migrated_template(postgres_server: PostgresServer) -> str:
    """A database migrated once; `db` copies it (CREATE DATABASE … TEMPLATE) per test."""
    from zimsend.server.storage import Database

    url = postgres_server.create_database()
    database = Database.from_url(url)
    database.migrate()
    database.dispose()  # a template must have no open connections
    return url.rsplit("/", 1)[1]


# --- SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'zimsend.db'}"


# --- Either engine --------------------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_database_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest) -> Iterator[Database]:
    from zimsend.server.storage import Database

    if request.param == "sqlite":
        database = Database.from_url(request.getfixturevalue("sqlite_url"))
        database.migrate()
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        template = request.getfixturevalue("_postgres_migrated_template")
        database = Database.from_url(server.create_database(template=template))
    yield database
    database.dispose()


# --- Settings -------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sqlite_url: str) -> Settings:
    """Settings that ignore the developer's ZIMSEND_* variables and config file."""
    import os

    from zimsend.server.config import Settings

    for name in list(os.environ):
        if name.startswith("ZIMSEND_"):
            monkeypatch.delenv(name)
    return Settings(
        data_dir=tmp_path / "data",
        database_url=sqlite_url,
        secret_pepper=TEST_PEPPER,
        webhooks_allow_insecure=True,
    )


# --- Real processes -------------------------------------------------------------------------
#
#   zimsend_env            module: environment for ZimSend children (temp data dir, test pepper)
#   server                 module: a real `zimsend serve` process -> (Program, grpc address)
#   admin                  module: run `zimsend admin …` against that server's database


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    data_dir = tmp_path_factory.mktemp("zimsend-data")
    return make_env(data_dir, TEST_PEPPER, ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1")


@pytest.fixture(scope="module")
def server(zimsend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from _processes import start_server

    program, address = start_server(
        Path(zimsend_env["ZIMSEND_DATA_DIR"]), zimsend_env, tmp_path_factory.mktemp("logs")
    )
    with program:
        yield program, address


@pytest.fixture(scope="module")
def admin(zimsend_env: dict[str, str]):  # type: ignore[no-untyped-def]
    from _processes import run_zimsend

    def run(*args: str) -> dict:
        return run_zimsend(["admin", *args], zimsend_env)

    return run
