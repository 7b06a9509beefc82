"""Real ZimSend processes for tests: the one way the suite starts a program.

The implementation lives in `zimsend.server.processes` (the benchmark command starts the
same processes the same way), on `zimsend.gateway.processes` (`spawn`, `terminate`: how every
ZimSend program starts another); this module keeps the names the tests import, and gives test
servers a per-client rate limit far above SPEC's 100 requests a minute (tests poll statuses
much faster than that; test_rate_limit.py sets its own limit).
"""

from __future__ import annotations

from pathlib import Path

from zimsend.server.processes import (
    BIN,
    ZIMSEND,
    Program,
    free_port,
    grpc_serving,
    run_zimsend,
    start_server,
)
from zimsend.server.processes import zimsend_env as _zimsend_env

__all__ = [
    "BIN",
    "ZIMSEND",
    "Program",
    "free_port",
    "grpc_serving",
    "run_zimsend",
    "start_server",
    "start_up",
    "zimsend_env",
]

#: The ports `zimsend up` takes, by the name of their option (`--http-port`, ...).
UP_PORTS = ("http", "device", "grpc", "admin", "metrics", "worker-metrics")


def zimsend_env(data_dir: Path, pepper: str, **extra: str) -> dict[str, str]:
    return _zimsend_env(data_dir, pepper, **{"ZIMSEND_RATE_LIMIT_PER_MINUTE": "1000000", **extra})


def start_up(
    data_dir: Path, *extra: str, ports: dict[str, int] | None = None, pepper: str | None = None
) -> tuple[Program, dict[str, int]]:
    """`zimsend up` with `extra` options on `ports` (default: free ones) and `data_dir`; without
    `pepper`, like a user: the pepper is generated in the data directory. Its output goes to
    `up.log` beside `data_dir`."""
    ports = ports or {name: free_port() for name in UP_PORTS}
    env = zimsend_env(data_dir, pepper or "unused")
    if pepper is None:
        del env["ZIMSEND_SECRET_PEPPER"]
    options = [arg for name in UP_PORTS for arg in (f"--{name}-port", str(ports[name]))]
    program = Program(
        [ZIMSEND, "up", "--data-dir", str(data_dir), *options, *extra],
        env=env,
        log_path=data_dir.parent / "up.log",
        name="zimsend up",
    )
    return program, ports
