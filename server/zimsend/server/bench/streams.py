"""Scenario 5: many phones on one server process — memory per stream, and a reconnect storm.

A fresh `zimsend serve` (so its RSS is not inflated by earlier scenarios) is measured idle,
then with N fleet phones connected (directly, as Envoy's device listener would forward them);
RSS delta / N is the cost of one phone. The fleet opens them in batches of 1,000 per second
(DESIGN: ~4,000 streams opened at the same instant fail).

The storm is the worst honest case: the server is killed (-9, no Reconnect frame, no goodbye)
and started again on the same port. Every phone sees its stream fail and comes back on its own
schedule — exponential backoff with full jitter, the agent's defaults (cap 60 s). The time
reported runs from the kill until the fleet counts every phone welcomed again, so it includes
the server's own restart.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from zimsend.server.bench.measure import rss_bytes
from zimsend.server.bench.stack import Stack, Tenant

SETTLE_S = 3.0


def streams(stack: Stack, tenant: Tenant, *, timeout: float) -> dict[str, Any]:
    phones_n = len(tenant.devices)
    port = int(stack.server_address.rpartition(":")[2])
    stack.stop(stack.server)
    stack.start_server(port)
    assert stack.server is not None
    time.sleep(SETTLE_S)
    idle = rss_bytes(stack.server.pid) or 0
    phones = stack.start_phones(tenant, "stream-phones", batch_size=1000, batch_interval=1.0)
    try:
        connect_s = phones.wait_connected(phones_n, timeout)
        time.sleep(SETTLE_S)
        loaded = rss_bytes(stack.server.pid) or 0
        per_phone_kb = round((loaded - idle) / phones_n / 1024, 1)
        stack.server.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        stack.server.proc.wait(10)
        stack.stop(stack.server)
        stack.start_server(port)
        restart_s = time.monotonic() - killed_at
        phones.wait_connected(phones_n, timeout)
        storm_s = round(time.monotonic() - killed_at, 1)
        reconnects = phones.stats().get("reconnects", 0)
    finally:
        stack.stop(phones.program)
    return {
        "phones": phones_n, "initial_connect_s": round(connect_s, 1),
        "server_rss_idle_mb": round(idle / 2**20, 1),
        "server_rss_loaded_mb": round(loaded / 2**20, 1),
        "rss_per_phone_kb": per_phone_kb, "storm_all_online_s": storm_s,
        "server_restart_s": round(restart_s, 1), "reconnect_attempts": reconnects,
        "goal": "<= 60 KB per phone; storm <= 60 s",
        "met": per_phone_kb <= 60 and storm_s <= 60,
    }
