"""Fixtures shared by the whole suite. Keep each section small; add new sections below.

Databases
    postgres_server          session: a PostgreSQL started for this run (tests/_pg.py)
    postgres_url             session: URL of that server's `postgres` maintenance database
    postgres_database_url    a fresh, empty PostgreSQL database
    sqlite_url               a fresh SQLite file under tmp_path
    database_url             a fresh, empty database, parametrized: "sqlite", "postgresql"
    db                       a migrated, empty `Database`, parametrized the same way (below)

Settings
    settings                 `Settings` isolated from the environment, data_dir under tmp_path

`db` is cheap: SQLite copies a file migrated once per session; PostgreSQL reuses one migrated
database per session and empties it before each test (closing any connection a previous test
leaked), which takes milliseconds where CREATE DATABASE takes half a second. A test that
changes the schema itself must use `database_url` (a brand-new database) instead.

PostgreSQL never skips: without its binaries the tests that need it fail, saying how to
install them. Tests on PostgreSQL carry the `postgres` marker (`-m "not postgres"` to
deselect them on purpose).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import grpc
import pytest
from _pg import PostgresNotInstalled, PostgresServer

if TYPE_CHECKING:
    import httpx
    from _devices import ServerDb, Tenant
    from _processes import Program
    from _sms import Account

    from zimsend.gateway import EnvoyProcess
    from zimsend.server.config import Settings
    from zimsend.server.storage import Database
    from zimsend.v1.sms_pb2_grpc import SmsServiceStub

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
def _postgres_shared_database(postgres_server: PostgresServer) -> str:
    """One migrated database for the session; `db` empties it before each test."""
    from zimsend.server.storage import Database

    url = postgres_server.create_database()
    database = Database.from_url(url)
    database.migrate()
    database.dispose()
    return url


def _empty_postgres_database(url: str) -> None:
    import psycopg

    from zimsend.server.storage import metadata

    with psycopg.connect(url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        with conn.transaction():
            for table in reversed(metadata.sorted_tables):  # children before parents
                conn.execute(f'DELETE FROM "{table.name}"')


# --- SQLite ---------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'zimsend.db'}"


@pytest.fixture(scope="session")
def _sqlite_migrated_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from zimsend.server.storage import Database

    path = tmp_path_factory.mktemp("sqlite-template") / "zimsend.db"
    database = Database.from_url(f"sqlite:///{path}")
    database.migrate()
    database.dispose()  # checkpoints the WAL into the file
    return path


# --- Either engine --------------------------------------------------------------------------


@pytest.fixture(params=ENGINES)
def database_url(request: pytest.FixtureRequest) -> str:
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_database_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture(params=ENGINES)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    from zimsend.server.storage import Database

    if request.param == "sqlite":
        path = tmp_path / "zimsend.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_migrated_file"), path)
        url = f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("_postgres_shared_database")
        _empty_postgres_database(url)
    database = Database.from_url(url)
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
#   server                 module: a real `zimsend serve` process -> RunningServer
#   admin                  module: run `zimsend admin …` against that server's database
#                          (`admin("create-client", "--name", "x")` -> its JSON output)


class RunningServer(NamedTuple):
    """The module's `zimsend serve` process and its gRPC address (`_, address = server`)."""

    program: Program
    address: str


#: `zimsend admin <args…>` against the module server's database; returns the JSON it prints.
Admin = Callable[..., dict[str, Any]]


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from _processes import zimsend_env as make_env

    data_dir = tmp_path_factory.mktemp("zimsend-data")
    return make_env(data_dir, TEST_PEPPER, ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1")


@pytest.fixture(scope="module")
def server(
    zimsend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    from _processes import start_server

    program, address = start_server(
        Path(zimsend_env["ZIMSEND_DATA_DIR"]), zimsend_env, tmp_path_factory.mktemp("logs")
    )
    with program:
        yield RunningServer(program, address)


@pytest.fixture(scope="module")
def admin(zimsend_env: dict[str, str]) -> Admin:
    from _processes import run_zimsend

    def run(*args: str) -> dict[str, Any]:
        return run_zimsend(["admin", *args], zimsend_env)

    return run


# --- Gateway: the real Envoy in front of the real server ------------------------------------
#
#   gateway_factory        module: start Envoys in front of `server` (ports chosen by the
#                          kernel, /healthz already 200); all stopped at module teardown
#   stack                  module: `server` + one Envoy + a client and API key -> Stack
#   http                   module: an httpx.Client on the stack's REST API with its credentials

#: `gateway_factory(**GatewayConfig fields)`: a started, healthy Envoy in front of `server`.
GatewayFactory = Callable[..., "EnvoyProcess"]


@dataclass(frozen=True)
class Stack:
    """A running server behind a running Envoy, with working credentials."""

    envoy: EnvoyProcess
    server_address: str
    client_id: str
    api_key: str

    @property
    def base_url(self) -> str:
        return self.envoy.base_url

    @property
    def auth(self) -> dict[str, str]:
        """The REST headers of a correctly authenticated request."""
        return {"X-API-Key": self.api_key, "X-Client-ID": self.client_id}

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The same credentials as gRPC metadata."""
        return (("x-api-key", self.api_key), ("x-client-id", self.client_id))


@contextlib.contextmanager
def online_agent(
    stack: Stack,
    admin: Admin,
    env: dict[str, str],
    workdir: Path,
    *extra: str,
) -> Iterator[Path]:
    """A new device of the stack's client, its real agent (simulator backend, quick sends and
    delivery reports) online through Envoy; yields the agent's outbox file."""
    import httpx
    from _devices import start_agent, wait_for

    device = admin(
        "create-device",
        "--client-id",
        stack.client_id,
        "--name",
        "sender",
        "--server-address",
        stack.envoy.device_target,
        "--no-qr",
    )
    url = f"{stack.base_url}/v1/devices/{device['device_id']}"
    with start_agent(
        env,
        stack.envoy.device_target,
        stack.client_id,
        device["device_id"],
        device["device_password"],
        workdir,
        "--send-delay",
        "0.05",
        "--delivery-delay",
        "0.2",
        *extra,
    ) as program:
        wait_for(
            lambda: httpx.get(url, headers=stack.auth, timeout=15).json()["status"] == "online",
            60,
            f"the agent online; it said:\n{program.output()[-2000:]}",
        )
        yield workdir / "outbox.jsonl"


@pytest.fixture(scope="module")
def gateway_factory(
    server: RunningServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayFactory]:
    from zimsend.gateway import start_envoy

    _, address = server
    started: list[EnvoyProcess] = []

    def start(**fields: Any) -> EnvoyProcess:
        fields.setdefault("upstreams", (address,))
        envoy = start_envoy(
            directory=tmp_path_factory.mktemp("envoy"),
            public_port=0,
            device_port=0,
            admin_port=0,
            **fields,
        )
        started.append(envoy)
        envoy.wait_healthy()
        return envoy

    try:
        yield start
    finally:
        for envoy in started:
            envoy.stop()


@pytest.fixture(scope="module")
def agent_outbox(
    stack: Stack,
    admin: Admin,
    zimsend_env: dict[str, str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Path]:
    """`online_agent` for the module's stack and settings: its outbox file."""
    with online_agent(stack, admin, zimsend_env, tmp_path_factory.mktemp("agent")) as outbox:
        yield outbox


@pytest.fixture(scope="module")
def stack(server: RunningServer, admin: Admin, gateway_factory: GatewayFactory) -> Stack:
    _, address = server
    client = admin("create-client", "--name", "gateway-tests")
    key = admin("create-key", "--client-id", client["client_id"], "--name", "rest")
    return Stack(gateway_factory(), address, client["client_id"], key["api_key"])


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    """The stack's REST API with its client's credentials (a module calling without them, or
    elsewhere, defines its own `http`)."""
    import httpx

    with httpx.Client(base_url=stack.base_url, timeout=15, headers=stack.auth) as client:
        yield client


# --- SMS service (test_sms_*.py, test_validation.py; helpers in tests/_sms.py) --------------
#
#   server_db              module: `Database` on the module server's SQLite file, to arrange
#                          what the API cannot (phones online, old or already-sent messages)
#   sms                    module: SmsServiceStub connected to the module's `server`
#   sms_account            module: a client with a live and a test API key (tests/_sms.Account)
#
# A module that needs other server settings overrides `zimsend_env` (see test_validation.py).


@pytest.fixture(scope="module")
def server_db(server: RunningServer, zimsend_env: dict[str, str]) -> Iterator[Database]:
    from zimsend.server.storage import Database

    database = Database.from_url(f"sqlite:///{zimsend_env['ZIMSEND_DATA_DIR']}/zimsend.db")
    yield database
    database.dispose()


@pytest.fixture(scope="module")
def sms(server: RunningServer) -> Iterator[SmsServiceStub]:
    from zimsend.v1 import sms_pb2_grpc

    _, address = server
    with grpc.insecure_channel(address) as channel:
        yield sms_pb2_grpc.SmsServiceStub(channel)


@pytest.fixture(scope="module")
def sms_account(server_db: Database) -> Account:
    from _sms import new_account

    return new_account(server_db, TEST_PEPPER.encode())


# --- Devices and dispatch (test_device_*.py, test_dispatch*.py; helpers in tests/_devices.py) -
#
#   device_channel         module: a grpc channel to `server`
#   tenant                 a fresh client with a live and a test key (written through storage)
#   link_db                module: read-only look into the server's SQLite file (outbox, rows)
#
# Modules that need other server settings (1 s heartbeats, no pacing) override `zimsend_env`.


@pytest.fixture(scope="module")
def device_channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.address) as channel:
        yield channel


@pytest.fixture
def tenant(
    zimsend_env: dict[str, str],
    server: RunningServer,
    device_channel: grpc.Channel,
    request: pytest.FixtureRequest,
) -> Tenant:
    from _devices import quick_tenant

    return quick_tenant(zimsend_env, device_channel, request.node.name[:90])


@pytest.fixture(scope="module")
def link_db(zimsend_env: dict[str, str]) -> ServerDb:
    from _devices import ServerDb

    return ServerDb(Path(zimsend_env["ZIMSEND_DATA_DIR"]))


# --- Summary lines ----------------------------------------------------------------------------
#
# A test may `record_property("summary", line)`: the line is printed in the terminal summary of
# every run, whether output is captured or not, passed or failed (the fault suite's counts in
# `.ci/run`'s output).


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    lines = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "summary"
    ]
    if lines:
        terminalreporter.section("summary lines")
        for line in lines:
            terminalreporter.write_line(line)
