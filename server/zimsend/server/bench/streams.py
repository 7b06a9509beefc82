"""Scenario 5: many phones on one server process — memory per stream, and a reconnect storm.

A fresh `zimsend serve` (so its RSS is not inflated by earlier scenarios) is measured idle,
then with N fleet phones connected (directly, as Envoy's device listener would forward them);
RSS delta / N is the cost of one phone. The fleet opens them `batch` per second, each at a
random moment of its second (DESIGN: ~4,000 streams opened at the same instant fail; on the
shared 2-core machine the connect path — authentication and the presence write — carried
~100 a second, and faster, phones waiting > 30 s for Welcome gave up and retried: churn, not
progress).

The storm is the worst honest case: the server is killed (-9, no Reconnect frame, no goodbye)
and started again on the same port. Every phone sees its stream fail and comes back on its own
schedule — exponential backoff with full jitter (the fleet's `--backoff-cap`, 10 s here; the agent's
default is 60 s). The time
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


def _wait_all(phones: Any, count: int, timeout: float) -> tuple[float | None, int]:
    """(seconds until `count` phones are connected or None on timeout, connected then)."""
    started = time.monotonic()
    connected = 0
    while time.monotonic() - started < timeout:
        connected = phones.stats().get("connected", 0)
        if connected >= count:
            return time.monotonic() - started, connected
        time.sleep(0.2)
    return None, connected


def streams(stack: Stack, tenant: Tenant, *, timeout: float, batch: int) -> dict[str, Any]:
    phones_n = len(tenant.devices)
    port = int(stack.server_address.rpartition(":")[2])
    stack.stop(stack.server)
    stack.start_server(port)
    assert stack.server is not None
    time.sleep(SETTLE_S)
    idle = rss_bytes(stack.server.pid) or 0
    phones = stack.start_phones(tenant, "stream-phones", batch_size=batch, batch_interval=1.0)
    try:
        connect_s, connected = _wait_all(phones, phones_n, timeout)
        if connect_s is None:
            raise RuntimeError(f"only {connected} of {phones_n} phones connected in {timeout} s")
        time.sleep(SETTLE_S)
        loaded = rss_bytes(stack.server.pid) or 0
        per_phone_kb = round((loaded - idle) / phones_n / 1024, 1)
        stack.server.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        stack.server.proc.wait(10)
        stack.stop(stack.server)
        stack.start_server(port)
        restart_s = time.monotonic() - killed_at
        back_s, back = _wait_all(phones, phones_n, timeout)
        storm_s = None if back_s is None else round(time.monotonic() - killed_at, 1)
        reconnects = phones.stats().get("reconnects", 0)
        busy = phones.stats().get("busy", 0)
        lost = phones.stats().get("lost", {})
    finally:
        stack.stop(phones.program)
    return {
        "phones": phones_n, "initial_connect_s": round(connect_s, 1),
        "server_rss_idle_mb": round(idle / 2**20, 1),
        "server_rss_loaded_mb": round(loaded / 2**20, 1),
        "rss_per_phone_kb": per_phone_kb, "storm_all_online_s": storm_s,
        "storm_online_at_timeout": None if storm_s is not None else back,
        "storm_timeout_s": timeout, "open_rate_per_s": batch,
        "server_restart_s": round(restart_s, 1), "reconnect_attempts": reconnects,
        "busy_refusals": busy, "streams_lost": lost,
        "goal": "<= 60 KB per phone; storm <= 60 s",
        "met": per_phone_kb <= 60 and storm_s is not None and storm_s <= 60,
    }
