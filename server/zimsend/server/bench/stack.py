"""The stack under test, on loopback: real processes started the way the tests start them.

`Stack` owns a scratch directory (SQLite database, logs, fleet files) and every process it
starts — the server (`zimsend serve`), Envoy, the worker (`zimsend worker`), the webhook
receiver, the fleet of phones, the ceiling server, load generators — as `Program`s, so nothing
outlives the bench even when a scenario fails. Tenants (a client, a live API key, devices) are
written straight into the database before the server starts: that is setup, not measurement.
"""

from __future__ import annotations

import json
import secrets
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from zimsend.server.processes import ZIMSEND, Program, free_port, grpc_serving, zimsend_env

PY = sys.executable
QUEUE_MAX_WAIT_SECONDS = 5


@dataclass
class Tenant:
    client_id: str
    api_key: str
    devices: list[dict[str, str]] = field(default_factory=list)

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key), ("x-client-id", self.client_id))

    def write_devices(self, path: Path) -> Path:
        path.write_text(json.dumps(self.devices))
        return path


class Stack:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pepper = secrets.token_hex(32)
        # Local HTTP receivers allowed; the per-client request limit (SPEC §8, 100/min by
        # default) lifted, or every scenario would measure 429s. Backpressure after 5 s of
        # queueing (default 300 s), so that the overload scenario's minute shows it. No per-SIM
        # send budget (20 parts a minute by default): the phones are simulated.
        self.env = zimsend_env(
            self.data_dir,
            self.pepper,
            ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
            ZIMSEND_RATE_LIMIT_PER_MINUTE="1000000000",
            ZIMSEND_QUEUE_MAX_WAIT_SECONDS=str(QUEUE_MAX_WAIT_SECONDS),
            ZIMSEND_DEFAULT_PARTS_PER_MINUTE="0",
        )
        self.programs: list[Program] = []
        self.server: Program | None = None
        self.server_address = ""
        self.envoy: Any = None

    # --- setup -------------------------------------------------------------------------------

    def provision(self, name: str, phones: int) -> Tenant:
        """A client with a live API key and `phones` devices, written directly (fast)."""
        from zimsend.server import accounts
        from zimsend.server.config import Settings
        from zimsend.server.storage import Database

        url = self.env.get("ZIMSEND_DATABASE_URL")  # PostgreSQL (bench/postgres.py)
        settings = Settings(data_dir=self.data_dir, secret_pepper=self.pepper)
        if url:
            settings = Settings(data_dir=self.data_dir, secret_pepper=self.pepper, database_url=url)
        db = Database.from_url(settings.database_url_value)
        try:
            db.migrate()
            client = accounts.create_client(db, name)
            key = accounts.create_api_key(db, settings.pepper(), client.id, "bench")
            tenant = Tenant(client.id, key.secret)
            for n in range(phones):
                new = accounts.create_device(
                    db, settings.pepper(), client.id, f"phone {n}", server_address="127.0.0.1:0"
                )
                tenant.devices.append(
                    {"client_id": client.id, "device_id": new.device.id, "password": new.password}
                )
        finally:
            db.dispose()
        return tenant

    # --- processes ---------------------------------------------------------------------------

    def start(self, argv: list[str], name: str, env: dict[str, str] | None = None) -> Program:
        program = Program(argv, env=env or self.env, log_path=self.logs / f"{name}.log", name=name)
        self.programs.append(program)
        return program

    def stop(self, program: Program | None) -> None:
        if program is not None:
            program.stop()
            if program in self.programs:
                self.programs.remove(program)

    def start_server(self, port: int | None = None) -> str:
        port = port or free_port()
        self.server = self.start([ZIMSEND, "serve", "--port", str(port)], "server")
        self.server_address = f"127.0.0.1:{port}"
        address = self.server_address
        self.server.wait_until(lambda: grpc_serving(address), timeout=60, what="SERVING")
        return address

    def start_ceiling(self) -> tuple[Program, str]:
        port = free_port()
        program = self.start(
            [PY, "-m", "zimsend.server.bench.ceiling", "--port", str(port)], "ceiling"
        )
        address = f"127.0.0.1:{port}"
        program.wait_until(lambda: grpc_serving(address), what="SERVING")
        return program, address

    def start_envoy(self, upstreams: tuple[str, ...] | None = None) -> str:
        """Envoy in front of the server (or of `upstreams`, the replicas), its per-key flood
        limit lifted (the bench is one key sending thousands of requests a second); returns
        the REST base URL."""
        from zimsend.gateway import RateLimit, start_envoy

        self.envoy = start_envoy(
            directory=self.root / "envoy",
            upstreams=upstreams or (self.server_address,),
            public_port=0,
            device_port=0,
            admin_port=0,
            access_log=False,
            rate_limit=RateLimit(requests_per_minute=100_000_000, unkeyed_per_minute=100_000_000),
        )
        self.envoy.wait_healthy(60)
        return str(self.envoy.base_url)

    def start_worker(self, name: str = "worker") -> Program:
        program = self.start([ZIMSEND, "worker", "--worker-id", f"bench-{name}"], name)
        program.wait_until(lambda: "worker.started" in program.output(), timeout=90, what="started")
        return program

    def start_receiver(
        self, secret: str | None = None, name: str = "receiver"
    ) -> tuple[Program, str]:
        """The counting receiver (receiver.py); with `secret` it checks both signatures."""
        port = free_port()
        argv = [PY, "-m", "zimsend.server.bench.receiver", "--port", str(port)]
        program = self.start(argv + (["--secret", secret] if secret else []), name)
        program.wait_until(lambda: "listening" in program.output(), what="listening")
        return program, f"http://127.0.0.1:{port}"

    def start_phones(
        self,
        tenant: Tenant,
        name: str,
        *,
        send_delay: float = 0.01,
        delivery_delay: float = 0.05,
        batch_size: int = 500,
        batch_interval: float = 1.0,
    ) -> Phones:
        folder = self.root / name
        folder.mkdir(exist_ok=True)
        phones = Phones(folder)
        devices = tenant.write_devices(folder / "devices.json")
        phones.program = self.start(
            [
                PY,
                "-m",
                "zimsend.server.bench.phones",
                "--server",
                self.server_address,
                "--devices-file",
                str(devices),
                "--stats-file",
                str(phones.stats_file),
                "--arrivals-file",
                str(phones.arrivals_file),
                "--send-delay",
                str(send_delay),
                "--delivery-delay",
                str(delivery_delay),
                "--batch-size",
                str(batch_size),
                "--batch-interval",
                str(batch_interval),
            ],
            name,
        )
        return phones

    def close(self) -> None:
        for program in reversed(self.programs):
            program.stop()
        self.programs.clear()
        if self.envoy is not None:
            self.envoy.stop()
            self.envoy = None

    # --- talking to the server ---------------------------------------------------------------

    def configure(self, tenant: Tenant, *, webhook_url: str | None, unpaced: bool) -> None:
        """Through the public API, as a customer would: the webhook, and pacing off."""
        from zimsend.v1 import devices_pb2, devices_pb2_grpc, webhooks_pb2, webhooks_pb2_grpc

        with grpc.insecure_channel(self.server_address) as channel:
            md = tenant.metadata()
            if webhook_url:
                webhooks_pb2_grpc.WebhookServiceStub(channel).ConfigureWebhook(
                    webhooks_pb2.ConfigureWebhookRequest(
                        url=webhook_url + "/hooks", events=["sms.sent", "sms.delivered"]
                    ),
                    metadata=md,
                    timeout=30,
                )
            if unpaced:
                stub = devices_pb2_grpc.DeviceServiceStub(channel)
                for device in tenant.devices:
                    stub.UpdateDevice(
                        devices_pb2.UpdateDeviceRequest(
                            device_id=device["device_id"], send_interval_ms=0
                        ),
                        metadata=md,
                        timeout=30,
                    )


class Phones:
    """Reads what a running phones process reports (see phones.py)."""

    def __init__(self, folder: Path) -> None:
        self.stats_file = folder / "stats.json"
        self.arrivals_file = folder / "arrivals.tsv"
        self.program: Program | None = None

    def stats(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.stats_file.read_text()))
        except (OSError, ValueError):
            return {}

    def wait_connected(self, count: int, timeout: float) -> float:
        """Seconds until `count` phones are connected; raises on timeout."""
        started = time.monotonic()
        assert self.program is not None
        self.program.wait_until(
            lambda: self.stats().get("connected", 0) >= count,
            timeout=timeout,
            what=f"{count} phones connected",
        )
        return time.monotonic() - started

    def arrivals(self) -> dict[str, float]:
        """First arrival time of every message id's SendCommand."""
        first: dict[str, float] = {}
        try:
            text = self.arrivals_file.read_text(encoding="ascii")
        except OSError:
            return first
        for line in text.splitlines():
            message_id, _, at = line.partition("\t")
            if message_id and message_id not in first:
                first[message_id] = float(at)
        return first


def receiver_counts(url: str) -> dict[str, int]:
    return dict(receiver_stats(url)["by_type"])


def receiver_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/stats", timeout=5) as response:
        return dict(json.loads(response.read()))
