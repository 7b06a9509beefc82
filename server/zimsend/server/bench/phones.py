"""The bench's phones: `zimsend device fleet` in a process that reports what it sees.

    python -m zimsend.server.bench.phones --server 127.0.0.1:50051 --devices-file d.json \
        --stats-file s.json --arrivals-file a.tsv --send-delay 0.01 --delivery-delay 0.05

The fleet itself (clients/zimsend/agent/fleet.py) prints status lines; the bench needs numbers
it can read while the fleet runs: the counters as a JSON file rewritten every 0.2 s, and every
SendCommand's arrival (`message id<TAB>wall-clock time`, appended) — the phone-side end of the
accept → command-on-phone latency. Wall-clock is fine here: every process runs on one machine,
against the same clock as the server's `queued_at`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

from zimsend.agent.fleet import FleetConfig, _raise_file_limit, load_devices, run_fleet
from zimsend.agent.fleet_phone import FleetStats
from zimsend.agent.simulation import SimulationConfig

TICK_S = 0.2


async def main(args: argparse.Namespace) -> None:
    stats = FleetStats(command_log=[])
    config = FleetConfig(
        server=args.server,
        batch_size=args.batch_size,
        batch_interval=args.batch_interval,
        status_interval=3600.0,
        backoff_cap=args.backoff_cap,
        simulation=SimulationConfig(
            seed=1, send_delay=args.send_delay, delivery_delay=args.delivery_delay
        ),
    )
    devices = load_devices(args.devices_file)
    with open(os.devnull, "w") as quiet:  # noqa: ASYNC230 - opening os.devnull cannot block
        fleet = asyncio.create_task(run_fleet(config, devices, stats=stats, out=quiet))
        try:
            with args.arrivals_file.open("a", encoding="ascii") as arrivals:
                while not fleet.done():
                    await asyncio.sleep(TICK_S)
                    _write(stats, args.stats_file, arrivals)
        finally:
            fleet.cancel()


def _write(stats: FleetStats, path: Path, arrivals: TextIO) -> None:
    log = stats.command_log or []
    stats.command_log = []
    if log:
        arrivals.write("".join(f"{m}\t{t:.6f}\n" for m, t in log))
        arrivals.flush()
    counters = {k: v for k, v in asdict(stats).items() if k != "command_log"}
    counters["at"] = time.time()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counters))
    tmp.replace(path)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--devices-file", type=Path, required=True)
    parser.add_argument("--stats-file", type=Path, required=True)
    parser.add_argument("--arrivals-file", type=Path, required=True)
    parser.add_argument("--send-delay", type=float, default=0.01)
    parser.add_argument("--delivery-delay", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--batch-interval", type=float, default=1.0)
    parser.add_argument("--backoff-cap", type=float, default=10.0)
    args = parser.parse_args()
    _raise_file_limit()
    try:
        import uvloop
    except ImportError:  # pragma: no cover
        asyncio.run(main(args))
    else:
        uvloop.run(main(args))


if __name__ == "__main__":
    cli()
