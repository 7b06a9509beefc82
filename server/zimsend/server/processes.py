"""Real ZimSend processes for `zimsend bench` and the test suite: the zimsend commands started
the one way (`zimsend.gateway.processes`: `spawn`, `signal_group`, `terminate`, re-exported
here), with their environment and readiness.

`Program` is the wrapper for callers that must never leave a process behind (the benchmark,
the tests): `stop()` (also on `__exit__`) terminates the group (SIGTERM, a wait, SIGKILL).
Output goes to a log file, shown when a readiness wait fails, so a broken start explains
itself. It lives in the server package, not under tests/, because `zimsend bench` starts the
same processes the same way from an installed tree; tests/_processes.py re-exports it.
`zimsend up`'s supervisor calls `spawn` from the main thread and keeps its own restart and
stop loop on trio (up.py).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from zimsend.gateway.processes import free_port, signal_group, spawn, terminate

__all__ = [
    "BIN",
    "ZIMSEND",
    "Program",
    "free_port",
    "grpc_serving",
    "run_zimsend",
    "signal_group",
    "spawn",
    "start_server",
    "terminate",
    "zimsend_env",
]

BIN = Path(sys.executable).parent
ZIMSEND = str(BIN / "zimsend")


class Program:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        log_path: Path,
        name: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.name = name or Path(argv[0]).name
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = log_path.open("ab")
        self.proc = spawn(self.argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_until(self, ready: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode} before {what or 'ready'}:\n"
                    f"{self.output()[-4000:]}"
                )
            try:
                if ready():
                    return
            except Exception:  # noqa: BLE001 - not ready yet
                pass
            time.sleep(0.05)
        raise AssertionError(
            f"{self.name} not {what or 'ready'} after {timeout}s:\n{self.output()[-4000:]}"
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            signal_group(self.proc.pid, sig)

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM to the group, SIGKILL after `timeout`; the group's other members (e.g. a
        supervisor's children) do not outlive it either."""
        code = terminate(self.proc, timeout)
        self._log.close()
        return code

    def __enter__(self) -> Program:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def zimsend_env(data_dir: Path, pepper: str, **extra: str) -> dict[str, str]:
    """The environment of a ZimSend child: isolated from the developer's ZIMSEND_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZIMSEND_")}
    env.update(ZIMSEND_DATA_DIR=str(data_dir), ZIMSEND_SECRET_PEPPER=pepper, **extra)
    return env


def run_zimsend(args: Sequence[str], env: Mapping[str, str], timeout: float = 60) -> dict[str, Any]:
    """Run a short `zimsend …` command and parse the JSON it prints."""
    done = subprocess.run(
        [ZIMSEND, *args], env=dict(env), capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"zimsend {' '.join(args)} failed:\n{done.stderr}"
    printed: dict[str, Any] = json.loads(done.stdout)
    return printed


def grpc_serving(address: str) -> bool:
    import grpc  # here, so `zimsend up` importing `spawn` does not load gRPC
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def start_server(
    data_dir: Path, env: Mapping[str, str], log_dir: Path, port: int | None = None
) -> tuple[Program, str]:
    """`zimsend serve` on `port` (default: a free one); returns the program and its gRPC
    address once SERVING. A fixed port restarts a server where its Envoy expects it."""
    port = port or free_port()
    program = Program(
        [ZIMSEND, "serve", "--port", str(port)],
        env=env,
        log_path=log_dir / "server.log",
        name="zimsend serve",
    )
    address = f"127.0.0.1:{port}"
    program.wait_until(lambda: grpc_serving(address), what="SERVING")
    return program, address
