"""Real webhook receivers and workers for the end-to-end webhook tests.

`Receiver` runs tests/webhook_receiver.js — the FAQ's Node.js verification snippet in node's
http server — with `node`; every request it gets is one JSON line in its record file. `Worker`
runs `zimsend worker` as a real process. Both are `Program`s: they never outlive a test.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from _devices import wait_for
from _processes import ZIMSEND, Program, free_port
from standardwebhooks import Webhook

RECEIVER_JS = Path(__file__).with_name("webhook_receiver.js")


class Receiver:
    def __init__(
        self,
        log_dir: Path,
        *,
        secret: str,
        port: int | None = None,
        mode: str = "ok",
        delay_ms: int = 0,
        status: int = 500,
        name: str = "receiver",
    ) -> None:
        self.port = port or free_port()
        self.secret = secret
        stem = f"{name}-{self.port}-{time.monotonic_ns()}"  # unique: a port may be reused
        self.record_file = log_dir / f"{stem}.jsonl"
        self.record_file.touch()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PORT": str(self.port),
            "WEBHOOK_SECRET": secret,
            "RECORD_FILE": str(self.record_file),
            "MODE": mode,
            "DELAY_MS": str(delay_ms),
            "STATUS": str(status),
        }
        self.program = Program(
            ["node", str(RECEIVER_JS)],
            env=env,
            log_path=log_dir / f"{stem}.log",
            name=f"node {name}",
        )
        self.program.wait_until(lambda: "listening" in self.program.output(), what="listening")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def records(self) -> list[dict[str, Any]]:
        lines = self.record_file.read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for(
        self,
        ready: Callable[[list[dict[str, Any]]], bool],
        timeout: float = 60,
        what: str = "deliveries",
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            records = self.records()
            if ready(records):
                return records
            time.sleep(0.05)
        raise AssertionError(f"receiver: no {what} after {timeout}s; got {self.records()}")

    def stop(self) -> None:
        self.program.stop()

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def body_of(record: dict[str, Any]) -> bytes:
    return base64.b64decode(record["body_base64"])


def verify_standard(record: dict[str, Any], secret: str | bytes) -> Any:
    """What a receiver using the `standardwebhooks` package would do with this request."""
    headers = {k: v for k, v in record["headers"].items() if v is not None}
    return Webhook(secret).verify(body_of(record), headers)


def start_worker(
    env: Mapping[str, str], log_dir: Path, name: str = "worker", *args: str
) -> Program:
    """`zimsend worker`, polling fast, once it has logged `worker.started`."""
    program = Program(
        [ZIMSEND, "worker", "--poll-interval", "0.1", "--worker-id", name, *args],
        env=env,
        log_path=log_dir / f"{name}-{time.monotonic_ns()}.log",
        name=f"zimsend worker ({name})",
    )
    program.wait_until(lambda: "worker.started" in program.output(), timeout=90, what="started")
    return program


def wait_until(check: Callable[[], Any], timeout: float = 60, what: str = "condition") -> Any:
    """`_devices.wait_for` with the webhook suites' default timeout."""
    return wait_for(check, timeout, what)
