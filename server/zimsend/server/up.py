"""`zimsend up`: everything started, on the embedded SQLite default, in one command.

A trio supervisor (DESIGN.md: every long-lived program but the server is trio) that
  1. migrates the database in `--data-dir` and, on first start, creates a default client, API
     key and device, writes them to `<data-dir>/credentials.json` (mode 600) and prints them;
  2. starts the children — the server, Envoy (REST + gRPC on `--http-port`, phones on
     `--device-port`), the worker when installed, and with `--with-simulated-device` a
     simulated phone whose "sent" SMS land in `<data-dir>/simulated-outbox.jsonl`;
  3. waits until Envoy's `/healthz` answers 200 and prints the addresses;
  4. supervises: a child that exits is reported by name and exit code, and brings the whole
     stack down with a non-zero status (a half-running gateway is worse than a stopped one);
     Ctrl-C / SIGTERM stops every child (SIGTERM, then SIGKILL after a grace period).

Children run in their own process groups, so a Ctrl-C in the terminal reaches only the
supervisor, which then stops them in order (phone first, Envoy last).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import trio

CREDENTIALS_FILE = "credentials.json"
STOP_GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path | None = None  # None: inherit the terminal


def register(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = commands.add_parser("up", help="start the whole stack (server, Envoy, worker)")
    parser.add_argument("--data-dir", default=".zimsend", help="state directory (default ./.zimsend)")
    parser.add_argument("--host", default="127.0.0.1", help="address Envoy listens on")
    parser.add_argument("--http-port", type=int, default=8080, help="REST and gRPC (Envoy)")
    parser.add_argument("--device-port", type=int, default=8081, help="phones' DeviceLink (Envoy)")
    parser.add_argument("--grpc-port", type=int, default=50051, help="the server itself (loopback)")
    parser.add_argument("--admin-port", type=int, default=9901, help="Envoy admin (loopback)")
    parser.add_argument(
        "--with-simulated-device", action="store_true",
        help="also run a simulated phone for the default device",
    )
    parser.add_argument("--tls-cert", help="serve both listeners over TLS with this certificate")
    parser.add_argument("--tls-key", help="private key of --tls-cert")
    parser.set_defaults(handler=_handler)


def _handler(args: argparse.Namespace) -> int:
    return trio.run(run_stack, args)


async def run_stack(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = _child_env(data_dir)
    credentials, created = await trio.to_thread.run_sync(
        ensure_credentials, data_dir, env, f"{args.host}:{args.device_port}"
    )
    children = _children(args, data_dir, env, credentials)
    failed: list[str] = []
    with trio.CancelScope() as stack_scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stack_scope)
            for child in children:
                nursery.start_soon(_supervise, child, stack_scope, failed)
            await _wait_healthy(args.host, args.http_port, stack_scope)
            _print_ready(args, data_dir, credentials, created)
    if failed:
        print(f"zimsend up: stopped because {', '.join(failed)}", file=sys.stderr)
        return 1
    print("zimsend up: stopped", file=sys.stderr)
    return 0


def _child_env(data_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["ZIMSEND_DATA_DIR"] = str(data_dir)
    # Local mode: webhook receivers on this machine over plain HTTP are allowed.
    env.setdefault("ZIMSEND_WEBHOOKS_ALLOW_INSECURE", "1")
    return env


def _zimsend_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "zimsend.cli", *args]


def ensure_credentials(data_dir: Path, env: dict[str, str], device_address: str) -> tuple[dict[str, Any], bool]:
    """Create the default client, key and device once; later starts reuse the file."""
    path = data_dir / CREDENTIALS_FILE
    if path.exists():
        return json.loads(path.read_text()), False
    from zimsend.server import accounts
    from zimsend.server.config import Settings
    from zimsend.server.storage import Database

    settings = Settings(data_dir=data_dir)
    db = Database.from_url(settings.database_url_value)
    try:
        db.migrate()
        client = accounts.create_client(db, "default")
        key = accounts.create_api_key(db, settings.pepper(), client.id, "default")
        device = accounts.create_device(
            db, settings.pepper(), client.id, "default phone", server_address=device_address
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
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(credentials, f, indent=2)
        f.write("\n")
    return credentials, True


def _children(
    args: argparse.Namespace, data_dir: Path, env: dict[str, str], credentials: dict[str, Any]
) -> list[Child]:
    from zimsend.gateway import envoy_command  # the gateway's one way to run Envoy

    logs = data_dir / "logs"
    logs.mkdir(exist_ok=True)
    upstream = f"127.0.0.1:{args.grpc_port}"
    children = [
        Child("server", _zimsend_argv("serve", "--port", str(args.grpc_port)), env),
        Child(
            "envoy",
            envoy_command(
                data_dir / "envoy", upstreams=(upstream,), listen_address=args.host,
                public_port=args.http_port, device_port=args.device_port,
                admin_port=args.admin_port, tls_cert=args.tls_cert, tls_key=args.tls_key,
            ),
            env,
            log_path=logs / "envoy-access.log",
        ),
    ]
    if any(ep.name == "worker" for ep in entry_points(group="zimsend.commands")):
        children.append(Child("worker", _zimsend_argv("worker"), env))
    if args.with_simulated_device:
        children.append(
            Child(
                "simulated-device",
                _zimsend_argv(
                    "device", "run", "--backend", "simulator",
                    "--server", f"127.0.0.1:{args.device_port}",
                    "--client-id", credentials["client_id"],
                    "--device-id", credentials["device_id"],
                    "--outbox", str(data_dir / "simulated-outbox.jsonl"),
                    "--journal", str(data_dir / "simulated-journal.db"),
                ),
                # The password goes through the environment, not argv (visible in `ps`).
                dict(env, ZIMSEND_DEVICE_PASSWORD=credentials["device_password"]),
            )
        )
    return children


async def _supervise(child: Child, stack_scope: trio.CancelScope, failed: list[str]) -> None:
    """Run one child until it exits (reported) or the stack stops (terminated).

    The child is started from the main thread on purpose: trio's `open_process` forks from a
    worker thread, and Envoy's parent-death signal (PR_SET_PDEATHSIG) fires when that *thread*
    exits — Envoy then received SIGTERM a few seconds after start. Exit is polled (5 Hz).
    """
    log_file = child.log_path.open("ab") if child.log_path else None
    try:
        proc = subprocess.Popen(
            child.argv, env=child.env, start_new_session=True,
            stdout=log_file if log_file else None, stdin=subprocess.DEVNULL,
        )
        try:
            while (code := proc.poll()) is None:
                await trio.sleep(0.2)
        finally:
            with trio.CancelScope(shield=True):
                await _terminate(proc)
        if not stack_scope.cancel_called:
            failed.append(f"{child.name} exited with code {code}")
            print(f"zimsend up: {child.name} exited with code {code}", file=sys.stderr)
            stack_scope.cancel()
    finally:
        if log_file:
            log_file.close()


async def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    _signal_group(proc.pid, signal.SIGTERM)
    with trio.move_on_after(STOP_GRACE_SECONDS):
        while proc.poll() is None:
            await trio.sleep(0.05)
        return
    _signal_group(proc.pid, signal.SIGKILL)
    await trio.to_thread.run_sync(proc.wait)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


async def _stop_on_signal(stack_scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for _ in signals:
            print("\nzimsend up: stopping…", file=sys.stderr)
            stack_scope.cancel()
            return


async def _wait_healthy(host: str, port: int, stack_scope: trio.CancelScope, timeout: float = 60) -> None:
    url = f"http://{host}:{port}/healthz"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await trio.to_thread.run_sync(_http_ok, url):
            return
        await trio.sleep(0.2)
    print(f"zimsend up: {url} did not become healthy within {timeout:.0f}s", file=sys.stderr)
    stack_scope.cancel()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _print_ready(
    args: argparse.Namespace, data_dir: Path, credentials: dict[str, Any], created: bool
) -> None:
    scheme = "https" if args.tls_cert else "http"
    lines = [
        "ZimSend is up.",
        f"  REST API      {scheme}://{args.host}:{args.http_port}/v1   (OpenAPI: /v1/openapi.json)",
        f"  gRPC          {args.host}:{args.http_port} (through Envoy), 127.0.0.1:{args.grpc_port} (server)",
        f"  phones        {args.host}:{args.device_port}",
        f"  data          {data_dir}",
        f"  client id     {credentials['client_id']}",
        f"  device id     {credentials['device_id']}",
    ]
    if created:
        lines += [
            f"  API key       {credentials['api_key']}   (shown once; also in {CREDENTIALS_FILE}, mode 600)",
            f"  device pass   {credentials['device_password']}",
            f"  pairing URI   {credentials['pairing_uri']}",
        ]
    else:
        lines.append(f"  credentials   {data_dir / CREDENTIALS_FILE}")
    if args.with_simulated_device:
        lines.append(f"  simulated SMS {data_dir / 'simulated-outbox.jsonl'}")
    lines += [
        "",
        f"  curl -H 'X-API-Key: …' -H 'X-Client-ID: {credentials['client_id']}' "
        f"{scheme}://{args.host}:{args.http_port}/v1/auth/test",
        "Ctrl-C stops everything.",
    ]
    print("\n".join(lines), flush=True)
