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
    "zimsend_env",
]


def zimsend_env(data_dir: Path, pepper: str, **extra: str) -> dict[str, str]:
    return _zimsend_env(data_dir, pepper, **{"ZIMSEND_RATE_LIMIT_PER_MINUTE": "1000000", **extra})
