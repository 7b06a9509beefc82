"""The fault suite's pieces (tests/test_faults.py): a deployment whose processes can be killed
and restarted, a REST sender that retries safely, and the tally that proves nothing was lost
or doubled.

`FaultStack` is one ZimSend on loopback, as in production but small: `zimsend serve` on a fixed
port (so a restarted server is where Envoy expects it), the real Envoy, `zimsend worker`, the
node webhook receiver of tests/_receivers.py (subscribed to every event type), and simulated
phones (`zimsend device run --backend simulator`), each with its own journal and outbox file,
connected through Envoy's phone port. Every process is a `Program`. With `database_url`
(PostgreSQL), `replicas` servers run behind the one Envoy and `workers` workers share the outbox
(issue 17: the production layout of docs/deploy.md, small).

`BulkSender` sends the run through REST as a customer who reads the docs would: bulk requests
with an Idempotency-Key, each retried with the same key and body after a connection error, a
503 or a 429 until it is answered 200, so a request cut by a server's death is retried without
creating a second message. Every answer is kept (start, end, status, error code) for the checks.

`Tally` counts what the run left behind — in the database, the phones' outboxes, the
receiver's records — and prints as the scenario's summary line. `LimitProbe` is a second
client calling at a steady pace against a small per-client limit during the run: the limit
must hold whichever replica answers, and whichever dies.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import httpx
import psycopg
from _devices import ServerDb, outbox_lines, quick_tenant, start_agent, wait_for
from _processes import Program, free_port, start_server, zimsend_env
from _receivers import Receiver, body_of, start_worker
from conftest import TEST_PEPPER

from zimsend.gateway import RateLimit, start_envoy
from zimsend.server import accounts
from zimsend.server.storage import Database

WEBHOOK_SECRET = "fault-suite-webhook-secret-0123456789"
EVENT_TYPES = ["sms.sent", "sms.delivered", "sms.failed", "device.connected", "device.disconnected"]
FINAL = ("delivered", "failed")
#: A request not answered within this is a hang (the server's own deadlines are shorter).
REQUEST_TIMEOUT_S = 30.0
#: Worker lease: a killed worker's events are taken over after this (default 30 s).
LEASE_SECONDS = "8"


@dataclass
class Phone:
    device_id: str
    password: str
    folder: Path
    program: Program | None = None
    starts: int = 0

    @property
    def outbox(self) -> Path:
        return self.folder / "outbox.jsonl"


class FaultStack:
    """Server, Envoy, worker, receiver and `phones` simulated phones under `root`."""

    def __init__(
        self,
        root: Path,
        *,
        phones: int = 2,
        delivery_delay: float = 1.0,
        database_url: str | None = None,
        replicas: int = 1,
        workers: int = 1,
    ) -> None:
        self.root = root
        self.data_dir = root / "data"
        self.database_url = database_url
        on_postgres = {"ZIMSEND_DATABASE_URL": database_url} if database_url else {}
        # 1 s heartbeats: presence follows restarts quickly. No pacing: the phones send as fast
        # as the simulator does. Webhook retries at 0/1/2 s instead of 0/60/300 s.
        self.env = zimsend_env(
            self.data_dir,
            TEST_PEPPER,
            ZIMSEND_WEBHOOKS_ALLOW_INSECURE="1",
            ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
            ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
            ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS="[0,1,2]",
            PYTHONFAULTHANDLER="1",  # SIGABRT shows where a hung process is (every thread)
            # No per-SIM send budget (20 parts a minute by default): the run is 1,000 a phone.
            ZIMSEND_DEFAULT_PARTS_PER_MINUTE="0",
            **on_postgres,
        )
        self.delivery_delay = delivery_delay
        self.ports = [free_port() for _ in range(replicas)]
        self._cleanup = contextlib.ExitStack()
        self.servers = 0
        self.workers = 0
        #: The server replicas by index (None: not running), on fixed ports.
        self.replicas: list[Program | None] = [None] * replicas
        self.worker: Program | None = None  # the last one started
        self.worker_programs: list[Program] = []
        self.phones: list[Phone] = []
        try:
            for index in range(replicas):
                self.start_server(index)
            self.envoy = start_envoy(
                directory=root / "envoy",
                upstreams=tuple(self.addresses),
                public_port=0,
                device_port=0,
                admin_port=0,
                rate_limit=RateLimit(
                    requests_per_minute=100_000_000, unkeyed_per_minute=100_000_000
                ),
            )
            self._cleanup.callback(self.envoy.stop)
            self.envoy.wait_healthy(60)
            channel = grpc.insecure_channel(self.address)
            self._cleanup.callback(channel.close)
            self.tenant = quick_tenant(self.env, channel, "faults")
            self.receiver = Receiver(root, secret=WEBHOOK_SECRET, name="faults")
            self._cleanup.callback(self.receiver.stop)
            self.rest(
                "POST",
                "/v1/webhooks/configure",
                {"url": self.receiver.url, "events": EVENT_TYPES, "secret": WEBHOOK_SECRET},
            )
            for _ in range(workers):
                self.start_worker()
            for n in range(phones):
                created = self.rest("POST", "/v1/devices", {"name": f"fault phone {n}"})
                folder = root / f"phone{n}"
                folder.mkdir()
                self.phones.append(Phone(created["device_id"], created["device_password"], folder))
                self.start_phone(n)
            for phone in self.phones:
                wait_for(
                    lambda p=phone: self.online(p.device_id), 60, f"phone {phone.device_id} online"
                )
        except BaseException:
            self.close()
            raise

    # --- processes ----------------------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.ports]

    @property
    def address(self) -> str:
        return self.addresses[0]

    @property
    def server(self) -> Program | None:
        return self.replicas[0]

    def start_server(self, index: int = 0) -> None:
        """`zimsend serve` on replica `index`'s port (each start logs to a file of its own)."""
        self.servers += 1
        program, _ = start_server(
            self.data_dir, self.env, self.root / f"server{self.servers}", port=self.ports[index]
        )
        self._cleanup.callback(program.stop)
        self.replicas[index] = program

    def start_worker(self) -> None:
        self.workers += 1
        self.worker = start_worker(
            self.env, self.root, f"worker{self.workers}", "--lease-seconds", LEASE_SECONDS
        )
        self.worker_programs.append(self.worker)
        self._cleanup.callback(self.worker.stop)

    def replica_of(self, device_id: str) -> int | None:
        """The index of the live replica whose row says it holds the phone's stream."""
        rows = self.db.query("SELECT replica_id FROM devices WHERE id = ?", device_id)
        holder = rows[0][0] if rows else None
        pid = int(holder.split(":")[1]) if holder else None
        for index, program in enumerate(self.replicas):
            if program is not None and program.alive() and program.pid == pid:
                return index
        return None

    def limited_client(self, per_minute: int) -> dict[str, str]:
        """A second client with its own per-client limit; its REST headers."""
        channel = grpc.insecure_channel(self.address)
        self._cleanup.callback(channel.close)
        tenant = quick_tenant(self.env, channel, "limited")
        db = Database.from_url(self.database_url or f"sqlite:///{self.data_dir / 'zimsend.db'}")
        try:
            accounts.set_rate_limit(db, tenant.client_id, per_minute)
        finally:
            db.dispose()
        return {"X-API-Key": tenant.live_key, "X-Client-ID": tenant.client_id}

    def start_phone(self, n: int) -> None:
        """Phone `n` on its own journal and outbox (the same ones at every start)."""
        phone = self.phones[n]
        phone.starts += 1
        phone.program = start_agent(
            self.env,
            self.envoy.device_target,
            self.tenant.client_id,
            phone.device_id,
            phone.password,
            phone.folder,
            "--send-delay",
            "0.01",
            "--delivery-delay",
            str(self.delivery_delay),
            "--seed",
            str(n),
            "--log-level",
            "INFO",
            name=f"agent{phone.starts}",
        )
        self._cleanup.callback(phone.program.stop)

    def processes(self) -> dict[str, int]:
        """Every running process of the stack by role, for RSS samples and kills."""
        named = {
            "server": self.server,
            "worker": self.worker,
            **{f"server{i + 1}": p for i, p in enumerate(self.replicas) if i},
            **{f"agent{n}": phone.program for n, phone in enumerate(self.phones)},
        }
        pids = {name: p.pid for name, p in named.items() if p is not None and p.alive()}
        pids["envoy"] = self.envoy.process.pid
        return pids

    def close(self) -> None:
        self._cleanup.close()

    def __enter__(self) -> FaultStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- REST ---------------------------------------------------------------------------

    @property
    def auth(self) -> dict[str, str]:
        return {"X-API-Key": self.tenant.live_key, "X-Client-ID": self.tenant.client_id}

    def rest(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        reply = httpx.request(
            method, f"{self.envoy.base_url}{path}", headers=self.auth, json=body, timeout=30
        )
        assert reply.status_code == 200, f"{method} {path}: {reply.status_code} {reply.text}"
        return reply.json()

    def online(self, device_id: str) -> bool:
        reply = httpx.get(
            f"{self.envoy.base_url}/v1/devices/{device_id}", headers=self.auth, timeout=10
        )
        return reply.status_code == 200 and reply.json().get("status") == "online"

    @property
    def db(self) -> ServerDb | PostgresDb:
        return PostgresDb(self.database_url) if self.database_url else ServerDb(self.data_dir)


class PostgresDb:
    """`ServerDb`'s reads (`?` placeholders, JSON columns as text) on PostgreSQL."""

    def __init__(self, url: str) -> None:
        self.conninfo = url.replace("+psycopg", "")

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.conninfo) as conn:
            rows = conn.execute(sql.replace("?", "%s"), args).fetchall()  # SQL from constants
        return [
            tuple(json.dumps(v) if isinstance(v, dict | list) else v for v in row) for row in rows
        ]

    def statuses(self, ids: list[str]) -> dict[str, str]:
        return dict(self.query("SELECT id, status FROM messages WHERE id = ANY(?)", ids))


# --- the load ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP exchange of the run: when it started and ended, its status and error code
    (status 0: no answer — `code` says why, e.g. ReadTimeout for a hang)."""

    started: float
    ended: float
    status: int
    code: str


RETRYABLE = {429, 502, 503, 504}


@dataclass
class BulkSender:
    """`requests` send-bulk calls of `per_request` recipients, started at `rate` a second by
    `threads` threads, each retried with its Idempotency-Key until answered 200."""

    base_url: str
    auth: dict[str, str]
    run_id: str
    requests: int = 100
    per_request: int = 20
    rate: float = 10.0
    threads: int = 4
    give_up_after: float = 120.0
    answers: list[Answer] = field(default_factory=list)
    accepted: dict[str, list[str]] = field(default_factory=dict)  # key -> message ids
    refused: list[tuple[str, int, str]] = field(default_factory=list)  # not retryable
    retried: int = 0
    in_flight: int = 0  # requests sent and not answered yet

    def __post_init__(self) -> None:
        self._next = itertools.count()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0

    @property
    def seconds(self) -> float:
        """How long the offer lasts (requests / rate)."""
        return self.requests / self.rate

    def start(self) -> None:
        self.started_at = time.monotonic()
        self._threads = [
            threading.Thread(target=self._loop, daemon=True, name=f"sender{n}")
            for n in range(self.threads)
        ]
        for thread in self._threads:
            thread.start()

    def join(self) -> None:
        for thread in self._threads:
            thread.join(self.seconds + self.give_up_after + REQUEST_TIMEOUT_S + 10)
            assert not thread.is_alive(), "a sender thread is stuck"

    def message_ids(self) -> list[str]:
        return [m for ids in self.accepted.values() for m in ids]

    def _loop(self) -> None:
        with httpx.Client(
            base_url=self.base_url, headers=self.auth, timeout=REQUEST_TIMEOUT_S
        ) as http:
            while (n := next(self._next)) < self.requests:
                due = self.started_at + n / self.rate
                time.sleep(max(0.0, due - time.monotonic()))
                self._send(http, n)

    def _send(self, http: httpx.Client, n: int) -> None:
        key = f"{self.run_id}-{n}"
        body = {
            "recipients": [f"+2637{7 + i % 2}{n:03d}{i:04d}" for i in range(self.per_request)],
            "message": f"Fault run {self.run_id}, batch {n}",
        }
        deadline = time.monotonic() + self.give_up_after
        first = True
        while True:
            if not first:
                with self._lock:
                    self.retried += 1
            first = False
            started = time.monotonic()
            with self._lock:
                self.in_flight += 1
            try:
                reply = http.post("/v1/sms/send-bulk", json=body, headers={"Idempotency-Key": key})
            except httpx.HTTPError as exc:
                self._note(Answer(started, time.monotonic(), 0, type(exc).__name__))
                status, wait = 0, 0.2
            else:
                payload = _json(reply)
                code = str(payload.get("error", {}).get("code", "")) if payload else ""
                self._note(Answer(started, time.monotonic(), reply.status_code, code))
                if reply.status_code == 200:
                    with self._lock:
                        self.accepted[key] = [m["message_id"] for m in payload["messages"]]
                    return
                status = reply.status_code
                wait = min(1.0, float(reply.headers.get("retry-after", 0.2) or 0.2))
                if status not in RETRYABLE:
                    with self._lock:
                        self.refused.append((key, status, reply.text[:300]))
                    return
            if time.monotonic() > deadline:
                with self._lock:
                    self.refused.append((key, status, "gave up retrying"))
                return
            time.sleep(wait)

    def _note(self, answer: Answer) -> None:
        with self._lock:
            self.in_flight -= 1
            self.answers.append(answer)


@dataclass
class LimitProbe:
    """A client with a small per-client limit calling `GET /v1/auth/test` at `rate` a second
    through Envoy until `stop()`: whatever replica answers (and whichever dies), the calls
    admitted in one minute window stay within the limit. `SLACK`: ratelimit.py flushes every
    0.1 s, so another replica may admit ~1 call (at this pace) the first did not see yet, a
    killed replica takes its unflushed ones with it, and a call sent at a minute's edge may
    be counted in the other window."""

    SLACK = 4
    base_url: str
    auth: dict[str, str]
    limit: int
    rate: float = 5.0
    answers: list[tuple[int, int]] = field(default_factory=list)  # (UTC minute, status)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="limit-probe")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(REQUEST_TIMEOUT_S + 5)

    def _loop(self) -> None:
        with httpx.Client(
            base_url=self.base_url, headers=self.auth, timeout=REQUEST_TIMEOUT_S
        ) as http:
            while not self._stop.wait(1 / self.rate):
                try:
                    status = http.get("/v1/auth/test").status_code
                except httpx.HTTPError:
                    status = 0
                self.answers.append((int(time.time() // 60), status))

    def admitted(self) -> dict[int, int]:
        return dict(collections.Counter(m for m, status in self.answers if status == 200))

    def summary(self) -> str:
        refused = sum(1 for _, status in self.answers if status == 429)
        return f"{max(self.admitted().values(), default=0)}/{self.limit}max,{refused}x429"

    def problems(self) -> list[str]:
        out = []
        over = {m: n for m, n in self.admitted().items() if n > self.limit + self.SLACK}
        if over:
            out.append(
                f"the per-client limit of {self.limit}/min did not hold across the "
                f"replicas: admitted per minute window {self.admitted()}"
            )
        if not any(status == 429 for _, status in self.answers):
            out.append(f"the limited client was never refused ({len(self.answers)} calls)")
        return out


def _json(reply: httpx.Response) -> dict[str, Any]:
    try:
        value = reply.json()
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


# --- waiting and counting -----------------------------------------------------------------


def wait_settled(stack: FaultStack, ids: list[str], timeout: float) -> None:
    """Until every message is delivered/failed and every webhook event left the outbox and
    reached the receiver — or `timeout`: the tally then says what is missing."""
    db = stack.db
    deadline = time.monotonic() + timeout

    def settled() -> bool:
        statuses = db.statuses(ids)
        if len(statuses) < len(ids) or any(s not in FINAL for s in statuses.values()):
            return False
        open_events = db.query(
            "SELECT count(*) FROM outbox_events WHERE client_id = ? AND status IN "
            "('pending', 'delivering')",
            stack.tenant.client_id,
        )[0][0]
        if open_events:
            return False
        stored = {
            row[0]
            for row in db.query(
                "SELECT id FROM outbox_events WHERE client_id = ?", stack.tenant.client_id
            )
        }
        return stored <= {r["event_id"] for r in stack.receiver.records()}

    while time.monotonic() < deadline:
        if settled():
            return
        time.sleep(0.5)


@dataclass
class Tally:
    """What a run left behind, counted from the database, the outboxes and the receiver."""

    accepted: int
    stored: int  # the client's messages in the database (a retry that made a second: more)
    final: int
    delivered: int
    failed: dict[str, str]  # message id -> error code
    stuck: dict[str, str]  # message id -> status, for messages not final
    duplicates: dict[str, int]  # message id -> sends (> 1) over every phone's outbox
    unsent_but_done: list[str]  # sent/delivered in the database, in no outbox
    events: int  # distinct events in the outbox table
    events_lost: list[str]  # stored events the receiver never got
    events_failed: int  # outbox rows that ended `failed`
    redelivered: int  # receiver requests beyond the first of each event_id (allowed)
    double_events: list[tuple[str, str]]  # (message id, type) with two distinct event_ids
    unverified: int  # receiver requests whose signature did not match

    @classmethod
    def count(cls, stack: FaultStack, ids: list[str]) -> Tally:
        db = stack.db
        client = stack.tenant.client_id
        rows = db.query("SELECT id, status, error_code FROM messages WHERE client_id = ?", client)
        status = {mid: st for mid, st, _ in rows}
        codes = {mid: code for mid, _, code in rows}
        sends: collections.Counter[str] = collections.Counter()
        for phone in stack.phones:
            sends.update(line["message_id"] for line in outbox_lines(phone.outbox))
        stored_events = db.query(
            "SELECT id, event_type, payload, status FROM outbox_events WHERE client_id = ?", client
        )
        records = stack.receiver.records()
        received = collections.Counter(r["event_id"] for r in records)
        per_message: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
        for record in records:
            data = json.loads(body_of(record)).get("data", {})
            if "message_id" in data:
                per_message[(data["message_id"], record["event"])].add(record["event_id"])
        for event_id, kind, payload, _ in stored_events:
            message_id = json.loads(payload).get("message_id")
            if message_id:
                per_message[(message_id, kind)].add(event_id)
        return cls(
            accepted=len(ids),
            stored=len(rows),
            final=sum(1 for m in ids if status.get(m) in FINAL),
            delivered=sum(1 for m in ids if status.get(m) == "delivered"),
            failed={m: str(codes[m]) for m in ids if status.get(m) == "failed"},
            stuck={m: str(status.get(m)) for m in ids if status.get(m) not in FINAL},
            duplicates={m: c for m, c in sends.items() if c > 1},
            unsent_but_done=[
                m for m in ids if status.get(m) in ("sent", "delivered") and not sends[m]
            ],
            events=len(stored_events),
            events_lost=[e for e, *_ in stored_events if not received[e]],
            events_failed=sum(1 for *_, st in stored_events if st == "failed"),
            redelivered=sum(c - 1 for c in received.values()),
            double_events=[k for k, v in per_message.items() if len(v) > 1],
            unverified=sum(1 for r in records if not r["verified"]),
        )

    def line(self, scenario: str, **extra: object) -> str:
        failed_codes = collections.Counter(self.failed.values())
        fields = {
            "accepted": self.accepted,
            "final": self.final,
            "duplicates": len(self.duplicates),
            "events_lost": len(self.events_lost),
            "stored": self.stored,
            "delivered": self.delivered,
            "failed": len(self.failed),
            "stuck": len(self.stuck),
            "events": self.events,
            "redelivered": self.redelivered,
            "double_events": len(self.double_events),
            **extra,
        }
        text = " ".join(f"{k}={v}" for k, v in fields.items())
        if failed_codes:
            text += " failed_codes=" + ",".join(f"{k}:{v}" for k, v in failed_codes.items())
        return f"fault {scenario}: {text}"

    def problems(self, *, failures_allowed: int) -> list[str]:
        """Every broken promise, said precisely (empty: the run held)."""
        out = []
        if self.stored != self.accepted:
            out.append(
                f"{self.stored} messages stored for {self.accepted} accepted: a retried "
                "request created messages twice (or an accepted one was lost)"
            )
        if self.stuck:
            sample = dict(itertools.islice(self.stuck.items(), 5))
            out.append(
                f"{len(self.stuck)} accepted messages never reached delivered/failed, e.g. {sample}"
            )
        if self.duplicates:
            out.append(f"sent more than once by the phones: {self.duplicates}")
        if self.unsent_but_done:
            out.append(f"sent/delivered but in no phone's outbox: {self.unsent_but_done[:5]}")
        unexpected = {m: c for m, c in self.failed.items() if c != "DEVICE_ERROR"}
        if unexpected:
            out.append(f"failed for another reason than an agent killed mid-send: {unexpected}")
        if len(self.failed) > failures_allowed:
            out.append(
                f"{len(self.failed)} failed (at most {failures_allowed}: one outcome "
                f"unknown per agent killed): {self.failed}"
            )
        if self.events_lost:
            out.append(
                f"{len(self.events_lost)} of {self.events} webhook events never reached "
                f"the receiver ({self.events_failed} ended failed in the outbox), e.g. "
                f"{self.events_lost[:5]}"
            )
        if self.double_events:
            out.append(f"one message event under two event_ids: {self.double_events[:5]}")
        if self.unverified:
            out.append(f"{self.unverified} webhook requests failed the signature check")
        return out


def seeded(seed: int, scenario: str) -> random.Random:
    """The scenario's random source: the same seed replays the same moments."""
    return random.Random(f"{seed}:{scenario}")
