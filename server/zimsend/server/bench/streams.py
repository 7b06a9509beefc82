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
the server's own restart. "Welcomed again" means after a loss: the fleet, one event loop
holding 10,000 streams, takes seconds to notice them all failing, and the restarted server
can be up sooner than that — its `connected` counter then still shows the old streams (a run
at 812ce70 reported a 1.3 s storm with 0 reconnect attempts). So the storm ends when the new
server has every phone online under a connection made after the kill (read from the
database, where the connect is written before the Welcome goes out) and the fleet counts
them all connected.
"""

from __future__ import annotations

import datetime as dt
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


def online_since(stack: Stack, client_id: str, since: dt.datetime) -> int:
    """How many of `client_id`'s devices the server has online under a connection made at or
    after `since`: what a restarted server really holds (the fleet's own counter lags)."""
    from sqlalchemy import func, select

    from zimsend.server.config import Settings
    from zimsend.server.storage import Database, Device
    from zimsend.server.storage.tables import table_of

    devices = table_of(Device).c
    url = stack.env.get("ZIMSEND_DATABASE_URL")
    settings = Settings(data_dir=stack.data_dir, secret_pepper=stack.pepper)
    db = Database.from_url(url or settings.database_url_value)
    try:
        with db.session() as session:
            return int(
                session.connection()
                .execute(
                    select(func.count()).where(
                        devices.client_id == client_id,
                        devices.online.is_(True),
                        devices.connected_at >= since,
                    )
                )
                .scalar_one()
            )
    finally:
        db.dispose()


def _wait_back(
    stack: Stack, phones: Any, tenant: Tenant, since: dt.datetime, timeout: float
) -> tuple[float | None, int]:
    """(seconds until the server holds every phone on a connection made since `since` and
    the fleet counts them connected, or None on timeout; online on the server then)."""
    started = time.monotonic()
    count, online = len(tenant.devices), 0
    while time.monotonic() - started < timeout:
        if phones.stats().get("connected", 0) >= count:
            online = online_since(stack, tenant.client_id, since)
            if online >= count:
                return time.monotonic() - started, online
        time.sleep(0.5)
    return None, online


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
        before = phones.stats().get("reconnects", 0)
        killed_wall = dt.datetime.now(dt.UTC)
        stack.server.kill(signal.SIGKILL)
        killed_at = time.monotonic()
        stack.server.proc.wait(10)
        stack.stop(stack.server)
        stack.start_server(port)
        restart_s = time.monotonic() - killed_at
        back_s, back = _wait_back(stack, phones, tenant, killed_wall, timeout)
        storm_s = None if back_s is None else round(time.monotonic() - killed_at, 1)
        reconnects = phones.stats().get("reconnects", 0) - before
        busy = phones.stats().get("busy", 0)
        lost = phones.stats().get("lost", {})
    finally:
        stack.stop(phones.program)
    return {
        "phones": phones_n,
        "initial_connect_s": round(connect_s, 1),
        "server_rss_idle_mb": round(idle / 2**20, 1),
        "server_rss_loaded_mb": round(loaded / 2**20, 1),
        "rss_per_phone_kb": per_phone_kb,
        "storm_all_online_s": storm_s,
        "storm_online_at_timeout": None if storm_s is not None else back,
        "storm_timeout_s": timeout,
        "open_rate_per_s": batch,
        "server_restart_s": round(restart_s, 1),
        "reconnect_attempts": reconnects,
        "busy_refusals": busy,
        "streams_lost": lost,
        "goal": "<= 60 KB per phone; storm <= 60 s",
        "met": per_phone_kb <= 60 and storm_s is not None and storm_s <= 60,
    }
