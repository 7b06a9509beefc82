"""The soak: steady load for a long time, and every process's memory must level off.

    zimsend bench --scenarios soak                  # 10 minutes (about 12 with start and drain)
    zimsend bench --scenarios soak --seconds 120    # a shorter look

Not part of the test suite (too long for CI); run it before a release, or after touching what a
process keeps per message. The stack is the production shape on loopback: `zimsend serve`
behind the real Envoy, `zimsend worker` delivering every `sms.sent`/`sms.delivered` webhook to
the bench's receiver, and real device agents (`zimsend device run --backend simulator`, each
with its own journal) connected through Envoy's phone port. A load generator sends through
REST at a fixed rate (open loop, SendSms through Envoy) for the whole window.

Every 5 s the RSS of each process (server, worker, Envoy, each agent, the receiver) is
sampled. The first 20 % of the window is warm-up (caches, pools, SQLite's page cache fill);
after it, a process *keeps growing* when the median of the last third of its samples is more
than max(4 MiB, 4 %) above the median of the first third — issue 12's agent, 16 MB over 10
minutes at 50 messages a second, grows ~10 MB between those windows. Also reported: the slope
of the second half (MiB a minute), and whether the pipeline kept up (every accepted message's
`sms.delivered` webhook arrived by the end of the drain). Exit status 1 when a process keeps
growing or the pipeline fell behind.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

from zimsend.server.bench.measure import rss_bytes
from zimsend.server.bench.rpc import run_loadgens
from zimsend.server.bench.stack import Stack, Tenant, receiver_counts
from zimsend.server.processes import ZIMSEND, Program

SECONDS = 600.0
RATE = 50.0  # messages a second: issue 12's soak
AGENTS = 2
SAMPLE_EVERY_S = 5.0
WARMUP_SHARE = 0.2
GROWTH_FLOOR_MIB = 4.0
GROWTH_SHARE = 0.04
DRAIN_S = 120.0
MIB = 2**20


def soak(
    stack: Stack, tenant: Tenant, *, seconds: float = SECONDS, rate: float = RATE, log: Any = print
) -> dict[str, Any]:
    """Run the soak on a stack whose server is started and `tenant` provisioned with agents'
    devices; returns per-process samples and verdicts, and the pipeline's counts."""
    base_url = stack.start_envoy()
    _receiver, receiver_url = stack.start_receiver()
    stack.start_worker()
    stack.configure(tenant, webhook_url=receiver_url, unpaced=True)
    agents = [_start_agent(stack, device, n) for n, device in enumerate(tenant.devices)]
    _wait_online(stack, tenant, timeout=60)
    watched: dict[str, int] = {
        "server": _pid(stack.server),
        "envoy": stack.envoy.process.pid,
        **{p.name: p.pid for p in stack.programs if p.name in ("worker", "receiver")},
        **{a.name: a.pid for a in agents},
    }
    samples: dict[str, list[tuple[float, int]]] = {name: [] for name in watched}
    stop = threading.Event()
    started = time.monotonic()

    def sample_forever() -> None:
        next_log = started + 60
        while not stop.wait(SAMPLE_EVERY_S):
            at = time.monotonic() - started
            for name, pid in watched.items():
                rss = rss_bytes(pid)
                if rss is not None:
                    samples[name].append((at, rss))
            if time.monotonic() >= next_log:
                next_log += 60
                log(
                    f"soak: {at / 60:.0f} min, RSS MiB "
                    + ", ".join(f"{n} {s[-1][1] / MIB:.0f}" for n, s in samples.items() if s)
                )

    sampler = threading.Thread(target=sample_forever, daemon=True)
    sampler.start()
    try:
        load = run_loadgens(
            stack,
            "soak",
            mode="rest",
            target=base_url,
            tenant=tenant,
            concurrency=32,
            duration=seconds,
            warmup=0.0,
            rate=rate,
        )
    finally:
        stop.set()
        sampler.join()
    accepted = load["ok"]
    drained = _drain(receiver_url, accepted, DRAIN_S)
    processes = {name: verdict(points, seconds) for name, points in samples.items()}
    return {
        "seconds": seconds,
        "rate": rate,
        "accepted": accepted,
        "outcomes": load["outcomes"],
        "webhooks": drained,
        "kept_up": drained.get("sms.delivered", 0) >= accepted,
        "processes": processes,
        "growing": sorted(n for n, v in processes.items() if v["growing"]),
        "exited": sorted(n for n, pid in watched.items() if rss_bytes(pid) is None),
    }


def verdict(points: list[tuple[float, int]], seconds: float) -> dict[str, Any]:
    """Whether one process's RSS kept growing after the warm-up (see the module docstring)."""
    steady = [rss for at, rss in points if at >= WARMUP_SHARE * seconds]
    if len(steady) < 6:
        return {"samples": len(steady), "growing": False, "note": "too few samples to judge"}
    third = len(steady) // 3
    first, last = statistics.median(steady[:third]), statistics.median(steady[-third:])
    allowed = max(GROWTH_FLOOR_MIB * MIB, GROWTH_SHARE * first)
    half = [(at, rss) for at, rss in points if at >= (1 + WARMUP_SHARE) / 2 * seconds]
    return {
        "samples": len(steady),
        "first_mib": round(first / MIB, 1),
        "last_mib": round(last / MIB, 1),
        "growth_mib": round((last - first) / MIB, 1),
        "allowed_mib": round(allowed / MIB, 1),
        "max_mib": round(max(steady) / MIB, 1),
        "slope_mib_per_min": round(_slope(half) * 60 / MIB, 2),
        "growing": last - first > allowed,
    }


def _slope(points: list[tuple[float, int]]) -> float:
    """Least-squares slope (bytes a second)."""
    if len(points) < 2:
        return 0.0
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def table(result: dict[str, Any]) -> str:
    rows = [
        f"{'process':<10} {'after warm-up':>14} {'end':>8} {'growth':>8} {'allowed':>8} "
        f"{'MiB/min':>8}  verdict"
    ]
    for name, v in result["processes"].items():
        if "first_mib" not in v:
            rows.append(f"{name:<10} {v['note']}")
            continue
        rows.append(
            f"{name:<10} {v['first_mib']:>11.1f} MiB {v['last_mib']:>8.1f} "
            f"{v['growth_mib']:>+8.1f} {v['allowed_mib']:>8.1f} "
            f"{v['slope_mib_per_min']:>+8.2f}  {'GROWING' if v['growing'] else 'flat'}"
        )
    hooks = result["webhooks"]
    rows.append(
        f"\n{result['accepted']} messages accepted in {result['seconds']:.0f} s at "
        f"{result['rate']:g}/s ({result['outcomes']}); webhooks received: "
        f"sms.sent {hooks.get('sms.sent', 0)}, sms.delivered "
        f"{hooks.get('sms.delivered', 0)} — "
        + ("the pipeline kept up" if result["kept_up"] else "THE PIPELINE FELL BEHIND")
    )
    if result["exited"]:
        rows.append(f"processes gone before the end: {', '.join(result['exited'])}")
    return "\n".join(rows)


def failed(result: dict[str, Any]) -> bool:
    return bool(result["growing"] or not result["kept_up"] or result["exited"])


def _start_agent(stack: Stack, device: dict[str, str], n: int) -> Program:
    folder = stack.root / f"agent{n}"
    folder.mkdir(exist_ok=True)
    env = dict(stack.env, ZIMSEND_DEVICE_PASSWORD=device["password"])
    return stack.start(
        [
            ZIMSEND,
            "device",
            "run",
            "--server",
            stack.envoy.device_target,
            "--client-id",
            device["client_id"],
            "--device-id",
            device["device_id"],
            "--journal",
            str(folder / "journal.sqlite3"),
            "--backend",
            "simulator",
            "--send-delay",
            "0.01",
            "--delivery-delay",
            "1",
            "--seed",
            str(n),
            "--log-level",
            "WARNING",
        ],
        f"agent{n}",
        env=env,
    )


def _wait_online(stack: Stack, tenant: Tenant, timeout: float) -> None:
    import sqlite3

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{stack.data_dir / 'zimsend.db'}?mode=ro", uri=True) as db:
            online = db.execute(
                "SELECT count(*) FROM devices WHERE client_id = ? AND online", (tenant.client_id,)
            ).fetchone()[0]
        if online == len(tenant.devices):
            return
        time.sleep(0.5)
    raise RuntimeError(
        f"the agents did not come online within {timeout:g} s (logs in {stack.logs})"
    )


def _drain(receiver_url: str, accepted: int, timeout: float) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while True:
        counts = receiver_counts(receiver_url)
        if counts.get("sms.delivered", 0) >= accepted or time.monotonic() > deadline:
            return counts
        time.sleep(1.0)


def _pid(program: Program | None) -> int:
    assert program is not None, "start the server first"
    return program.pid
