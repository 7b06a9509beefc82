"""`zimsend up`: everything started, on the embedded SQLite default, in one command.

A trio supervisor (DESIGN.md: every long-lived program but the server is trio) that
  1. migrates the database in `--data-dir` (created mode 700; the SQLite files are 600) and, on
     first start, creates a default client, API key and device, writes them to
     `<data-dir>/credentials.json` (mode 600) and prints them;
  2. starts the children — the server (`--replicas N` of them, on consecutive ports from
     `--grpc-port`), Envoy (REST + gRPC on `--http-port`, phones on `--device-port`, balancing
     over the replicas), the worker when installed (`--workers M`), and with
     `--with-simulated-device` a simulated phone whose "sent" SMS land in
     `<data-dir>/simulated-outbox.jsonl`;
  3. says "ZimSend is up" only when every part can do its job: Envoy's `/healthz` answers 200
     (over https with `--tls-cert`, trusting that certificate), every replica answers its gRPC
     health check, and the simulated phone, when there is one, is online (a send right after
     the line finds it);
  4. keeps the children running: one that exits is restarted after a backoff (0.5 s, doubling
     to 8 s) with the reason said on stderr. A child that crashes `RestartPolicy.max_crashes`
     times within `window_seconds` would only flap, so `up` then stops everything, says why
     and exits 1. The private PostgreSQL of `--postgres` is watched by the same rules (its
     postmaster restarted in place, the replicas reconnect on their own);
  5. on Ctrl-C / SIGTERM stops the children in order (`STOP_ORDER`: the server first, so it
     refuses new calls and finishes the ones in flight while its phone and Envoy are still
     there; Envoy last), each with SIGTERM, then SIGKILL after a grace period.

The database: the embedded SQLite in `--data-dir` by default; `--database-url
postgresql://…` for a PostgreSQL server; `--postgres` for a private PostgreSQL cluster in
`<data-dir>/postgres` (`local_postgres`: PostgreSQL's own binaries, reachable only through a
Unix socket there; started before the children, stopped after them). Several replicas need
PostgreSQL (SQLite serves one machine and one writer): docs/deploy.md.

Children run in their own process groups, so a Ctrl-C in the terminal reaches only the
supervisor. Insecure webhook receivers (http://, private addresses) stay refused unless
`--allow-insecure-webhooks` is given: `up` is the README's run command, not only a dev toy.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from zimsend.server.processes import signal_group, spawn

if TYPE_CHECKING:
    from zimsend.server.local_postgres import LocalPostgres

CREDENTIALS_FILE = "credentials.json"
STOP_GRACE_SECONDS = 10.0
SERVER_STOP_GRACE_SECONDS = 25.0
#: Stop order (children not running are skipped): the server drains while the phone, the worker
#: and Envoy still run, so calls in flight through Envoy finish and are answered.
STOP_ORDER = ("server", "simulated-device", "worker", "envoy")
#: How long each readiness step (Envoy healthy, then the simulated phone online) may take.
READY_TIMEOUT_SECONDS = 60.0
#: The database `--postgres` creates in its private cluster.
POSTGRES_DATABASE = "zimsend"


@dataclass(frozen=True)
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None = None  # None: inherit the terminal
    #: SIGTERM to SIGKILL. The server's stop has three bounded waits (calls in flight, phones
    #: leaving, callers going quiet: app.py), so it gets more.
    stop_grace: float = STOP_GRACE_SECONDS


@dataclass(frozen=True)
class RestartPolicy:
    """When a crashed child comes back: after `first_delay`, doubling with each recent crash up
    to `max_delay`. The `max_crashes`-th crash within `window_seconds` stops the stack."""

    max_crashes: int = 5
    window_seconds: float = 60.0
    first_delay: float = 0.5
    max_delay: float = 8.0

    def delay(self, recent_crashes: int) -> float:
        return min(self.max_delay, self.first_delay * 2.0 ** max(0, recent_crashes - 1))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("up", help="start the whole stack (server, Envoy, worker)")
    parser.add_argument(
        "--data-dir", default=".zimsend", help="state directory (default ./.zimsend)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="address Envoy listens on")
    parser.add_argument("--http-port", type=int, default=8080, help="REST and gRPC (Envoy)")
    parser.add_argument("--device-port", type=int, default=8081, help="phones' DeviceLink (Envoy)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="the server itself (loopback)")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin (loopback)")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=9470,
        help="the server's Prometheus endpoint (loopback; 0: off)",
    )
    parser.add_argument(
        "--worker-metrics-port",
        type=int,
        default=9471,
        help="the worker's Prometheus endpoint (loopback; 0: off)",
    )
    parser.add_argument(
        "--with-simulated-device",
        action="store_true",
        help="also run a simulated phone for the default device",
    )
    parser.add_argument("--tls-cert", help="serve both listeners over TLS with this certificate")
    parser.add_argument("--tls-key", help="private key of --tls-cert")
    parser.add_argument(
        "--database-url",
        help="PostgreSQL for the whole stack (postgresql://user:pw@host/db; default: "
        "ZIMSEND_DATABASE_URL, else the embedded SQLite in --data-dir)",
    )
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="run a private PostgreSQL cluster in <data-dir>/postgres (PostgreSQL's binaries "
        "on PATH or under /usr/lib/postgresql) and use it",
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        help="server processes behind Envoy (default 1; more need PostgreSQL)",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; more need PostgreSQL)"
    )
    parser.add_argument(
        "--allow-insecure-webhooks",
        action="store_true",
        help="development only: accept http:// and private/loopback webhook receivers "
        "(ZIMSEND_WEBHOOKS_ALLOW_INSECURE); off by default",
    )
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    problem = _topology_problem(args)
    if problem:
        print(f"zimsend up: {problem}", file=sys.stderr)
        return 2
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not args.postgres:
        return trio.run(run_stack, args)
    # Started here, in the main thread, so that its parent-death signal is tied to this
    # process's life, not to a worker thread's (local_postgres).
    from zimsend.server.local_postgres import (
        LocalPostgres,
        PostgresNotInstalled,
        cluster_directory,
    )

    try:
        cluster = LocalPostgres(
            cluster_directory(data_dir),
            database=POSTGRES_DATABASE,
            max_connections=postgres_connections(args.replicas, args.workers),
        )
        _say(f"starting PostgreSQL in {cluster.directory}")
        cluster.start()
    except (PostgresNotInstalled, ValueError, RuntimeError, OSError) as exc:
        _say(f"could not start PostgreSQL: {exc}")
        return 1
    try:
        args.database_url = cluster.url()
        return trio.run(run_stack, args, cluster)
    finally:
        _say("stopping PostgreSQL")
        cluster.stop()


def _topology_problem(args: argparse.Namespace) -> str | None:
    if (args.tls_cert is None) != (args.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if args.postgres and args.database_url:
        return "--postgres runs its own PostgreSQL: give it or --database-url, not both"
    if args.replicas < 1 or args.workers < 0:
        return "--replicas must be at least 1 and --workers at least 0"
    url = args.database_url or os.environ.get("ZIMSEND_DATABASE_URL", "")
    on_postgres = args.postgres or url.startswith(("postgres://", "postgresql"))
    if (args.replicas > 1 or args.workers > 1) and not on_postgres:
        return (
            "several replicas or workers need PostgreSQL (SQLite serves one machine): "
            "add --database-url postgresql://… or --postgres"
        )
    return None


def postgres_connections(replicas: int, workers: int) -> int:
    """`max_connections` for a stack of `replicas` servers and `workers` workers: each
    process's pool at its fullest (`database.POOL_SIZE` + SQLAlchemy's overflow of 10) plus
    its LISTEN connection, plus room for `zimsend admin` and psql (docs/deploy.md)."""
    from zimsend.server.storage.database import POOL_SIZE

    return max(100, (replicas + workers) * (POOL_SIZE + 10 + 1) + 20)


async def run_stack(args: argparse.Namespace, cluster: LocalPostgres | None = None) -> int:
    # Before any other task runs, so blocking on the file system here delays nothing (ASYNC240).
    data_dir = Path(args.data_dir).resolve()  # noqa: ASYNC240
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = _child_env(data_dir, allow_insecure_webhooks=args.allow_insecure_webhooks)
    if args.database_url:
        env["ZIMSEND_DATABASE_URL"] = args.database_url
    env["ZIMSEND_METRICS_PORT"] = str(args.metrics_port)
    env["ZIMSEND_WORKER_METRICS_PORT"] = str(args.worker_metrics_port)
    # Pairing URIs made through the API (POST /v1/devices) name Envoy's phone listener too.
    env.setdefault("ZIMSEND_DEVICE_LINK_ADDRESS", f"{args.host}:{args.device_port}")
    env.setdefault("ZIMSEND_DEVICE_LINK_TLS", "1" if args.tls_cert else "0")
    credentials, created = await trio.to_thread.run_sync(
        ensure_credentials,
        data_dir,
        env,
        f"{args.host}:{args.device_port}",
        bool(args.tls_cert),
        env.get("ZIMSEND_DATABASE_URL"),
    )
    supervisor = Supervisor(_children(args, data_dir, env, credentials))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, supervisor)
        for child in supervisor.children:
            nursery.start_soon(supervisor.keep_running, child)
        if cluster is not None:
            nursery.start_soon(supervisor.keep_postgres_running, cluster)
        nursery.start_soon(_announce_when_ready, args, data_dir, credentials, created, supervisor)
        await supervisor.stop_requested.wait()
        with trio.CancelScope(shield=True):
            await supervisor.stop_all()
        nursery.cancel_scope.cancel()
    if supervisor.failure:
        _say(f"stopped because {supervisor.failure}")
        return 1
    _say("stopped")
    return 0


def _say(message: str) -> None:
    print(f"zimsend up: {message}", file=sys.stderr, flush=True)


def _child_env(data_dir: Path, *, allow_insecure_webhooks: bool) -> dict[str, str]:
    env = dict(os.environ)
    env["ZIMSEND_DATA_DIR"] = str(data_dir)
    if allow_insecure_webhooks:
        env["ZIMSEND_WEBHOOKS_ALLOW_INSECURE"] = "1"
    return env


def _zimsend_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "zimsend.cli", *args]


def _local_host(host: str) -> str:
    """Where processes on this machine reach a listener bound to `host`."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def ensure_credentials(
    data_dir: Path,
    env: dict[str, str],
    device_address: str,
    tls: bool = False,
    database_url: str | None = None,
) -> tuple[dict[str, Any], bool]:
    """Create the default client, key and device once per database; later starts on the same
    database reuse the file (its pairing URI rewritten when the phones' address or TLS changed
    since)."""
    from sqlalchemy import make_url

    from zimsend.server import accounts

    path = data_dir / CREDENTIALS_FILE
    database = (
        make_url(database_url).render_as_string(hide_password=True) if database_url else "sqlite"
    )
    if path.exists() and json.loads(path.read_text()).get("database", "sqlite") == database:
        credentials = json.loads(path.read_text())
        uri = accounts.pairing_uri(
            device_address,
            credentials["client_id"],
            credentials["device_id"],
            credentials["device_password"],
            tls=tls,
        )
        if credentials.get("pairing_uri") != uri:
            credentials["pairing_uri"] = uri
            _write_private_json(path, credentials)
        return credentials, False
    from zimsend.server.config import Settings
    from zimsend.server.storage import Database

    settings = (
        Settings(data_dir=data_dir, database_url=database_url)
        if database_url
        else Settings(data_dir=data_dir)
    )
    db = Database.from_url(settings.database_url_value)
    try:
        db.migrate()
        client = accounts.create_client(db, "default")
        key = accounts.create_api_key(db, settings.pepper(), client.id, "default")
        device = accounts.create_device(
            db,
            settings.pepper(),
            client.id,
            "default phone",
            server_address=device_address,
            tls=tls,
        )
    finally:
        db.dispose()
    credentials = {
        "client_id": client.id,
        "api_key": key.secret,
        "key_id": key.key.id,
        "device_id": device.device.id,
        "device_password": device.password,
        "pairing_uri": device.pairing_uri,
        "database": database,
    }
    _write_private_json(path, credentials)
    return credentials, True


def _write_private_json(path: Path, data: dict[str, Any]) -> None:
    """Write `path` (mode 600) through a temporary file, so no reader sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
    tmp.replace(path)


def _children(
    args: argparse.Namespace, data_dir: Path, env: dict[str, str], credentials: dict[str, Any]
) -> list[Child]:
    from zimsend.gateway import envoy_command  # the gateway's one way to run Envoy

    logs = data_dir / "logs"
    logs.mkdir(mode=0o700, exist_ok=True)
    ports = replica_ports(args)
    children = [
        Child(
            _numbered("server", i, len(ports)),
            _zimsend_argv("serve", "--port", str(port)),
            dict(env, ZIMSEND_METRICS_PORT=str(_nth_port(args.metrics_port, i))),
            stop_grace=SERVER_STOP_GRACE_SECONDS,
        )
        for i, port in enumerate(ports)
    ]
    children.append(
        Child(
            "envoy",
            envoy_command(
                data_dir / "envoy",
                upstreams=tuple(f"127.0.0.1:{p}" for p in ports),
                listen_address=args.host,
                public_port=args.http_port,
                device_port=args.device_port,
                admin_port=args.admin_port,
                tls_cert=args.tls_cert,
                tls_key=args.tls_key,
            ),
            env,
            log_path=logs / "envoy-access.log",
        )
    )
    if _has_worker():
        children += [
            Child(
                _numbered("worker", j, args.workers),
                _zimsend_argv("worker"),
                dict(env, ZIMSEND_WORKER_METRICS_PORT=str(_nth_port(args.worker_metrics_port, j))),
            )
            for j in range(args.workers)
        ]
    if args.with_simulated_device:
        tls = ["--tls", "--ca-file", str(Path(args.tls_cert).resolve())] if args.tls_cert else []
        children.append(
            Child(
                "simulated-device",
                _zimsend_argv(
                    "device",
                    "run",
                    "--backend",
                    "simulator",
                    "--server",
                    f"{_local_host(args.host)}:{args.device_port}",
                    *tls,
                    "--client-id",
                    credentials["client_id"],
                    "--device-id",
                    credentials["device_id"],
                    "--outbox",
                    str(data_dir / "simulated-outbox.jsonl"),
                    "--journal",
                    str(data_dir / "simulated-journal.db"),
                ),
                # The password goes through the environment, not argv (visible in `ps`).
                dict(env, ZIMSEND_DEVICE_PASSWORD=credentials["device_password"]),
            )
        )
    return children


def replica_ports(args: argparse.Namespace) -> list[int]:
    """The servers' gRPC ports: `--grpc-port` and the next ones."""
    return [args.grpc_port + i for i in range(getattr(args, "replicas", 1))]


def _numbered(kind: str, index: int, count: int) -> str:
    """`server` alone, `server-1` … `server-N` when there are several."""
    return kind if count == 1 else f"{kind}-{index + 1}"


def _nth_port(first: int, index: int) -> int:
    """Metrics ports: the server's (9470) and the worker's (9471) first, then every second
    port (9472, 9474 … servers; 9473, 9475 … workers). 0 stays off."""
    return first + 2 * index if first else 0


def _has_worker() -> bool:
    return any(ep.name == "worker" for ep in entry_points(group="zimsend.commands"))


def _stop_rank(name: str) -> int:
    kind = name.rstrip("0123456789").removesuffix("-") if name[-1:].isdigit() else name
    return STOP_ORDER.index(kind) if kind in STOP_ORDER else 99


class Supervisor:
    """Keeps every child running until the stack stops, then stops them in `STOP_ORDER`.

    Children are started from the main thread on purpose: trio's `open_process` forks from a
    worker thread, and Envoy's parent-death signal (PR_SET_PDEATHSIG) fires when that *thread*
    exits — Envoy then received SIGTERM a few seconds after start. Exits are polled (5 Hz).
    """

    def __init__(self, children: list[Child], policy: RestartPolicy | None = None) -> None:
        self.children = children
        self.policy = policy or RestartPolicy()
        self.running: dict[str, subprocess.Popen[bytes]] = {}
        self.stop_requested = trio.Event()
        #: Why the stack stopped on its own (None: asked to, by a signal).
        self.failure: str | None = None

    def request_stop(self, failure: str | None = None) -> None:
        if failure is not None and self.failure is None and not self.stop_requested.is_set():
            self.failure = failure
        self.stop_requested.set()

    async def keep_running(self, child: Child) -> None:
        await self._keep(child.name, lambda: self._run_once(child))

    async def keep_postgres_running(self, cluster: LocalPostgres) -> None:
        """Restart `--postgres`'s cluster when its postmaster dies, by `policy` like a child
        (it was started before the children, by `_handler`)."""
        await self._keep("PostgreSQL", lambda: self._run_postgres_once(cluster))

    async def _keep(self, name: str, run_once: Callable[[], Awaitable[str | None]]) -> None:
        crashes: deque[float] = deque()
        while not self.stop_requested.is_set():
            why = await run_once()
            if why is None:
                return  # the stack is stopping
            now = time.monotonic()
            crashes.append(now)
            while crashes and crashes[0] < now - self.policy.window_seconds:
                crashes.popleft()
            window = f"{self.policy.window_seconds:g} s"
            if len(crashes) >= self.policy.max_crashes:
                _say(f"{name} {why}: {len(crashes)} crashes within {window}, giving up")
                self.request_stop(f"{name} kept crashing ({len(crashes)} times within {window})")
                return
            delay = self.policy.delay(len(crashes))
            _say(
                f"{name} {why}; restarting it in {delay:g} s "
                f"(crash {len(crashes)} of {self.policy.max_crashes} allowed within {window})"
            )
            with trio.move_on_after(delay):
                await self.stop_requested.wait()

    async def _run_once(self, child: Child) -> str | None:
        """Run `child` until it exits; returns why it ended, or None when the stack stops
        (whoever stops the stack terminates it)."""
        log_file = child.log_path.open("ab") if child.log_path else None
        try:  # the child has its own copy of the log's descriptor
            # Popen returns once the child is forked; its exit is polled below (ASYNC110).
            proc = spawn(child.argv, env=child.env, stdout=log_file)
        except OSError as exc:
            return f"could not start ({exc})"
        finally:
            if log_file:
                log_file.close()
        self.running[child.name] = proc
        while (code := proc.poll()) is None:
            if self.stop_requested.is_set():
                return None
            await trio.sleep(0.2)
        del self.running[child.name]
        if self.stop_requested.is_set():
            return None
        return _exit_reason(code)

    async def _run_postgres_once(self, cluster: LocalPostgres) -> str | None:
        """(Re)start the cluster if its postmaster is gone, then wait for it to end; why it
        ended, or None when the stack stops (`_handler` stops the cluster after the children).
        `start()` blocks this loop for as long as PostgreSQL takes to accept connections, on
        purpose: it forks from the main thread, to which the postmaster's parent-death signal
        is tied (local_postgres)."""
        if cluster.exit_code() is not None:
            try:
                cluster.start()
            except (RuntimeError, OSError) as exc:
                return f"could not start ({exc})"
            _say("PostgreSQL restarted")
        while (code := cluster.exit_code()) is None:
            if self.stop_requested.is_set():
                return None
            await trio.sleep(0.2)
        if self.stop_requested.is_set():
            return None
        return _exit_reason(code)

    async def stop_all(self) -> None:
        """Terminate the running children one by one in `STOP_ORDER` (others last)."""
        names = sorted(self.running, key=_stop_rank)
        grace = {child.name: child.stop_grace for child in self.children}
        for name in names:
            proc = self.running.pop(name, None)
            if proc is not None:
                await _terminate(proc, grace.get(name, STOP_GRACE_SECONDS))


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


async def _terminate(proc: subprocess.Popen[bytes], grace: float) -> None:
    if proc.poll() is not None:
        return
    signal_group(proc.pid, signal.SIGTERM)
    with trio.move_on_after(grace):
        while proc.poll() is None:  # noqa: ASYNC110 - a Popen's exit has no event to await
            await trio.sleep(0.05)
        return
    signal_group(proc.pid, signal.SIGKILL)
    await trio.to_thread.run_sync(proc.wait)


async def _stop_on_signal(supervisor: Supervisor) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print(file=sys.stderr)
            _say("stopping…")
            supervisor.request_stop()
            return


class _Probe:
    """HTTP(S) requests from `up` to its own Envoy: the readiness checks."""

    def __init__(self, args: argparse.Namespace, credentials: dict[str, Any]) -> None:
        scheme = "https" if args.tls_cert else "http"
        self.base_url = f"{scheme}://{_local_host(args.host)}:{args.http_port}"
        self.context = _trusting(args.tls_cert) if args.tls_cert else None
        self.headers = {
            "X-API-Key": credentials["api_key"],
            "X-Client-ID": credentials["client_id"],
        }
        self.device_id: str = credentials["device_id"]
        self.last_problem = ""

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(self.base_url + path, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=2, context=self.context) as response:
                status, body = response.status, response.read()
        except urllib.error.HTTPError as exc:
            status, body = exc.code, exc.read()
        except OSError as exc:
            self.last_problem = str(exc)
            return 0, None
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    def healthy(self) -> bool:
        status, _ = self.get("/healthz")
        return status == 200

    def device_online(self) -> bool:
        status, body = self.get(f"/v1/devices/{self.device_id}", self.headers)
        if status != 200:
            self.last_problem = f"GET /v1/devices/{self.device_id} answered {status}: {body}"
            return False
        self.last_problem = f"the device is {body.get('status')}"
        return bool(body.get("status") == "online")


def _trusting(cert_path: str) -> ssl.SSLContext:
    """TLS that trusts exactly `cert_path` (self-signed or not). The hostname is not checked:
    the probe dials this machine's address, which the certificate need not name."""
    context = ssl.create_default_context(cafile=cert_path)
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the leaf itself is the anchor
    return context


async def _wait_for(check: Any, timeout: float, every: float) -> bool:  # noqa: ASYNC109 - the deadline is part of this call's contract
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await trio.to_thread.run_sync(check):
            return True
        await trio.sleep(every)
    return False


async def _announce_when_ready(
    args: argparse.Namespace,
    data_dir: Path,
    credentials: dict[str, Any],
    created: bool,
    supervisor: Supervisor,
) -> None:
    """Print "ZimSend is up" once Envoy is healthy and the simulated phone (if any) online;
    stop the stack, saying what never got ready, otherwise."""
    probe = _Probe(args, credentials)
    limit = f"{READY_TIMEOUT_SECONDS:g} s"
    if not await _wait_for(probe.healthy, READY_TIMEOUT_SECONDS, every=0.2):
        supervisor.request_stop(
            f"{probe.base_url}/healthz did not answer 200 within {limit} ({probe.last_problem})"
        )
        return
    ports = replica_ports(args)
    if len(ports) > 1 and not await _wait_for(
        lambda: _replicas_serving(ports), READY_TIMEOUT_SECONDS, every=0.3
    ):
        supervisor.request_stop(f"not every replica ({ports}) was serving within {limit}")
        return
    # Each look is an API call counted against the default client's limit: look calmly.
    if args.with_simulated_device and not await _wait_for(
        probe.device_online, READY_TIMEOUT_SECONDS, every=0.3
    ):
        hint = (
            " (with --tls-cert, the certificate must name the address it dials)"
            if args.tls_cert
            else ""
        )
        supervisor.request_stop(
            f"the simulated phone was not online within {limit}{hint}: {probe.last_problem}"
        )
        return
    _print_ready(args, data_dir, credentials, created)


def _replicas_serving(ports: list[int]) -> bool:
    """Every replica answers its gRPC health check SERVING (Envoy routes to it)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    for port in ports:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )
            except grpc.RpcError:
                return False
            if reply.status != health_pb2.HealthCheckResponse.SERVING:
                return False
    return True


def _metrics_lines(args: argparse.Namespace) -> list[str]:
    """Where Prometheus scrapes each process (docs/operations.md)."""
    from zimsend.server.config import Settings

    host = os.environ.get("ZIMSEND_METRICS_HOST", Settings.model_fields["metrics_host"].default)
    server_port = getattr(args, "metrics_port", 0)
    worker_port = getattr(args, "worker_metrics_port", 0)
    replicas, workers = getattr(args, "replicas", 1), getattr(args, "workers", 1)
    endpoints = [
        f"http://{host}:{_nth_port(server_port, i)}/metrics ({_numbered('server', i, replicas)})"
        for i in range(replicas if server_port else 0)
    ]
    if worker_port and _has_worker():
        endpoints += [
            f"http://{host}:{_nth_port(worker_port, j)}/metrics ({_numbered('worker', j, workers)})"
            for j in range(workers)
        ]
    return [f"  metrics       {', '.join(endpoints)}"] if endpoints else []


def _database_label(args: argparse.Namespace) -> str:
    from sqlalchemy import make_url

    url = getattr(args, "database_url", None) or os.environ.get("ZIMSEND_DATABASE_URL")
    if not url:
        return "SQLite (embedded)"
    shown = make_url(url).render_as_string(hide_password=True)
    return f"PostgreSQL, private cluster ({shown})" if args.postgres else shown


def _print_ready(
    args: argparse.Namespace, data_dir: Path, credentials: dict[str, Any], created: bool
) -> None:
    scheme = "https" if args.tls_cert else "http"
    over_tls = " (TLS)" if args.tls_cert else ""
    servers = ", ".join(f"127.0.0.1:{port}" for port in replica_ports(args))
    workers = getattr(args, "workers", 1) if _has_worker() else 0
    lines = [
        "ZimSend is up.",
        f"  web console   {scheme}://{args.host}:{args.http_port}/",
        f"  REST API      {scheme}://{args.host}:{args.http_port}/v1   (OpenAPI: /v1/openapi.json)",
        f"  gRPC          {args.host}:{args.http_port}{over_tls} (through Envoy), "
        f"{servers} (server{'s' if ',' in servers else ''})",
        f"  phones        {args.host}:{args.device_port}{over_tls}",
        f"  data          {data_dir}",
        f"  database      {_database_label(args)}; {len(replica_ports(args))} server "
        f"replica(s), {workers} worker(s)",
        f"  client id     {credentials['client_id']}",
        f"  device id     {credentials['device_id']}",
    ]
    if created:
        lines += [
            f"  API key       {credentials['api_key']}"
            f"   (shown once; also in {CREDENTIALS_FILE}, mode 600)",
            f"  device pass   {credentials['device_password']}",
            f"  pairing URI   {credentials['pairing_uri']}",
        ]
    else:
        lines.append(f"  credentials   {data_dir / CREDENTIALS_FILE}")
    lines += _metrics_lines(args)
    if args.with_simulated_device:
        lines.append(f"  simulated SMS {data_dir / 'simulated-outbox.jsonl'} (its phone is online)")
    if args.allow_insecure_webhooks:
        lines.append("  webhooks      http:// and private receivers allowed (development only)")
    cacert = f"--cacert {args.tls_cert} " if args.tls_cert else ""
    lines += [
        "",
        f"  curl {cacert}-H 'X-API-Key: …' -H 'X-Client-ID: {credentials['client_id']}' "
        f"{scheme}://{args.host}:{args.http_port}/v1/auth/test",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
    if created and sys.stdout.isatty():  # a phone scans this instead of typing the URI
        from zimsend.agent.pairing import pairing_qr_text

        print(f"Pairing QR code of {credentials['device_id']}:", flush=True)
        print(pairing_qr_text(credentials["pairing_uri"]), flush=True)
