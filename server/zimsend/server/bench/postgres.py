"""Scenario `postgres`: the production layout (docs/deploy.md) — PostgreSQL, two server
replicas, two workers, Envoy over both — measured beside the SQLite scenarios.

Its own stack and its own PostgreSQL cluster (`local_postgres`, production durability:
fsync and synchronous_commit on), started after the SQLite scenarios and stopped after it:

- accept: SendSms over gRPC straight to replica A (as scenario `grpc`), and over REST through
  Envoy balancing over both replicas (as `rest`);
- end to end (as `e2e`): the phones hold their streams on replica B while every send goes to
  replica A, so each message crosses replicas (accepted on A, dispatched by B, which hears of
  it through LISTEN/NOTIFY); webhooks by the two workers;
- cross-replica accept → phone latency, from A's `queued_at` to the phone's arrival of the
  SendCommand from B: at half the rate the stack sustained (`e2e`'s second phase) and at a
  tenth of it (`MODERATE_SHARE`, the "moderate load" of the goal: p99 under 100 ms). The
  sustained rate saturates both cores (load generator, phones and receiver included): at half
  of it, waiting for a CPU is most of the latency.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from zimsend.server.bench import pipeline, rpc
from zimsend.server.bench.stack import Stack
from zimsend.server.processes import ZIMSEND, free_port, grpc_serving

__all__ = ["GOAL_P99_MS", "cells", "details", "topology"]

GOAL_P99_MS = 100.0
#: The moderate load of the latency goal: this share of the sustained end-to-end rate.
MODERATE_SHARE = 0.1
REPLICAS = 2
WORKERS = 2
#: PostgreSQL settings over its defaults (`ZIMSEND_BENCH_PG_SETTINGS="a=1,b=2"` adds more).
SETTINGS: dict[str, str] = dict(
    item.split("=", 1)
    for item in os.environ.get("ZIMSEND_BENCH_PG_SETTINGS", "").split(",")
    if "=" in item
)


def topology(
    root: Path,
    *,
    phones: int,
    rate: float,
    concurrency: int,
    rpc_seconds: float,
    e2e_seconds: float,
    warmup: float,
    drain: float,
    sqlite: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    from zimsend.server.local_postgres import LocalPostgres
    from zimsend.server.up import postgres_connections

    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:  # PostgreSQL runs as `postgres`, which must reach root/pg
        root.chmod(0o711)
        root.parent.chmod(root.parent.stat().st_mode | 0o011)
    cluster = LocalPostgres(
        root / "pg",
        database="zimsend",
        max_connections=postgres_connections(REPLICAS, WORKERS) + 20,
        settings=SETTINGS,
    )
    cluster.start()
    stack = Stack(root / "stack")
    stack.env["ZIMSEND_DATABASE_URL"] = cluster.url()
    try:
        return _run(
            stack,
            phones=phones,
            rate=rate,
            concurrency=concurrency,
            rpc_seconds=rpc_seconds,
            e2e_seconds=e2e_seconds,
            warmup=warmup,
            drain=drain,
            sqlite=sqlite,
        )
    finally:
        stack.close()
        cluster.stop()


def _run(
    stack: Stack,
    *,
    phones: int,
    rate: float,
    concurrency: int,
    rpc_seconds: float,
    e2e_seconds: float,
    warmup: float,
    drain: float,
    sqlite: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    accept = stack.provision("bench-pg-accept", 0)
    tenant = stack.provision("bench-pg-e2e", phones)
    replica_a = stack.start_server()
    port_b = free_port()
    server_b = stack.start([ZIMSEND, "serve", "--port", str(port_b)], "server-b")
    replica_b = f"127.0.0.1:{port_b}"
    server_b.wait_until(lambda: grpc_serving(replica_b), timeout=60, what="SERVING")
    base_url = stack.start_envoy(upstreams=(replica_a, replica_b))
    grpc_row = rpc.grpc_send(
        stack,
        accept,
        ceiling_rps=None,
        concurrency=concurrency,
        duration=rpc_seconds,
        warmup=warmup,
    )
    rest_row = rpc.rest_send(
        stack,
        accept,
        base_url,
        grpc_rps=grpc_row["rps"],
        concurrency=concurrency,
        duration=rpc_seconds,
        warmup=warmup,
    )
    _, receiver_url = stack.start_receiver()
    for n in range(WORKERS):
        stack.start_worker(f"worker-{n + 1}")
    stack.configure(tenant, webhook_url=receiver_url, unpaced=True)
    # Phones on replica B; every send to replica A (stack.server_address).
    stack.server_address, address_a = replica_b, stack.server_address
    try:
        fleet = stack.start_phones(tenant, "pg-phones", send_delay=0.01, delivery_delay=0.05)
    finally:
        stack.server_address = address_a
    fleet.wait_connected(len(tenant.devices), 60)
    e2e = pipeline.e2e(
        stack,
        tenant,
        fleet,
        receiver_url,
        rate=rate,
        concurrency=concurrency,
        duration=e2e_seconds,
        warmup=warmup,
        drain=drain,
    )
    moderate_rps = max(1.0, round(e2e["e2e_rps"] * MODERATE_SHARE))
    phase = rpc.run_loadgens(
        stack,
        "pg-moderate",
        mode="grpc",
        target=stack.server_address,
        tenant=tenant,
        concurrency=concurrency,
        duration=e2e_seconds,
        warmup=warmup,
        rate=moderate_rps,
        record=True,
    )
    cross = pipeline.accept_to_phone(phase, fleet)
    p99 = cross.get("p99_ms")
    return {
        "replicas": REPLICAS,
        "workers": WORKERS,
        "grpc_rps": grpc_row["rps"],
        "grpc_latency": {k: grpc_row.get(k) for k in ("p50_ms", "p99_ms")},
        "rest_rps": rest_row["rps"],
        "rest_latency": {k: rest_row.get(k) for k in ("p50_ms", "p99_ms")},
        "e2e_rps": e2e["e2e_rps"],
        "e2e": e2e,
        "cross_replica_accept_to_phone": {**cross, "at_rps": moderate_rps},
        "cross_replica_at_half_load": {
            **e2e["half_load"]["accept_to_phone"],
            "at_rps": e2e["half_load"]["offered_rps"],
        },
        "sqlite": {
            "grpc_rps": sqlite.get("grpc", {}).get("rps"),
            "rest_rps": sqlite.get("rest", {}).get("rps"),
            "e2e_rps": sqlite.get("e2e", {}).get("e2e_rps"),
            "accept_to_phone": sqlite.get("e2e", {}).get("half_load", {}).get("accept_to_phone"),
        },
        "goal": f"cross-replica accept->phone p99 <= {GOAL_P99_MS:g} ms at 1/10 load",
        "met": p99 is not None and p99 <= GOAL_P99_MS,
    }


def cells(n: int, row: dict[str, Any], fmt: Any, met: str) -> list[str]:
    """The table row (report.py's columns)."""
    cross = row["cross_replica_accept_to_phone"]
    return [
        str(n),
        f"PostgreSQL: {row['replicas']} replicas, {row['workers']} workers",
        f"{fmt(row['e2e_rps'])} msg/s e2e",
        fmt(cross.get("p50_ms")),
        fmt(cross.get("p99_ms")),
        f"@{fmt(cross['at_rps'])}/s",
        row["goal"],
        met,
    ]


def details(row: dict[str, Any], fmt: Any) -> str:
    s = row["sqlite"]
    return (
        f"postgres: accept gRPC {fmt(row['grpc_rps'])} req/s (SQLite {fmt(s['grpc_rps'])}), "
        f"REST via Envoy over both replicas {fmt(row['rest_rps'])} req/s (SQLite "
        f"{fmt(s['rest_rps'])}), e2e {fmt(row['e2e_rps'])} msg/s (SQLite "
        f"{fmt(s['e2e_rps'])}); cross-replica accept->phone "
        f"{row['cross_replica_accept_to_phone']}, at half load "
        f"{row['cross_replica_at_half_load']} (SQLite, one process, half load: "
        f"{s['accept_to_phone']}); stages/s {row['e2e']['stages_rps']}"
    )
