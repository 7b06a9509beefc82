"""Real ZimSend processes for tests: the one way the suite starts a program.

The implementation lives in `zimsend.server.bench.processes` (the benchmark command starts the
same processes the same way); this module keeps the names the tests import.
"""

from zimsend.server.bench.processes import (
    BIN,
    ZIMSEND,
    Program,
    free_port,
    grpc_serving,
    run_zimsend,
    start_server,
    zimsend_env,
)

__all__ = [
    "BIN", "ZIMSEND", "Program", "free_port", "grpc_serving", "run_zimsend", "start_server",
    "zimsend_env",
]
