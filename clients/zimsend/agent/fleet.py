"""`zimsend device fleet`: thousands of simulated phones in one asyncio process.

Why asyncio (the agent is trio): see fleet_phone.py — thousands of streams need grpc.aio, which
exists only on asyncio; the process is asyncio throughout ("one process, one model").

What it does: loads `[{client_id, device_id, password}, …]`, starts the phones in batches
(`batch_size` every `batch_interval` seconds, each phone at a random moment inside its batch's
window: opening ~4,000 streams at the same instant makes calls fail), keeps them connected
(each with its own full-jitter backoff), and prints one status line every `status_interval`.

Durability: every phone has the agent's journal logic (same exactly-once rules) on one shared
in-memory SQLite database. That is acceptable for a fleet, which exists for load and tests:
if the load generator itself dies, there is no phone whose promise to keep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from zimsend.agent.backoff import Backoff
from zimsend.agent.fleet_phone import FleetPhone, FleetStats
from zimsend.agent.journal import Journal
from zimsend.agent.simulation import Simulation, SimulationConfig

__all__ = ["FleetConfig", "FleetDevice", "load_devices", "run_fleet", "run_fleet_blocking"]

log = logging.getLogger("zimsend.fleet")


@dataclass(frozen=True)
class FleetDevice:
    """Credentials of one phone of the fleet."""

    client_id: str
    device_id: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class FleetConfig:
    """How to run the fleet (the `zimsend device fleet` flags)."""

    server: str
    tls: bool = False
    ca_file: Path | None = None
    batch_size: int = 500
    batch_interval: float = 1.0
    status_interval: float = 5.0
    #: Stop after this many seconds; 0 runs until cancelled.
    duration: float = 0.0
    simulation: SimulationConfig = field(default_factory=SimulationConfig)
    backoff_cap: float = 60.0


def load_devices(path: Path) -> list[FleetDevice]:
    """Read a devices file; ValueError (TypeError for a non-list) naming what is wrong."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, list):
        raise TypeError("expected a JSON list of {client_id, device_id, password}")
    devices = []
    for i, item in enumerate(data):
        try:
            devices.append(
                FleetDevice(str(item["client_id"]), str(item["device_id"]), str(item["password"]))
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"entry {i} lacks client_id, device_id or password") from exc
    return devices


def status_line(stats: FleetStats) -> str:
    """One line summarising the fleet (printed every status interval)."""
    return (
        f"fleet: {stats.connected}/{stats.phones} connected, {stats.refused} refused, "
        f"{stats.stopped} stopped, {stats.reconnects} reconnects ({stats.busy} server busy) | "
        f"commands {stats.commands}, "
        f"sends {stats.sends}, failed {stats.failures}, inbound {stats.inbound} | reports "
        f"{stats.reports_sent} sent, {stats.reports_acked} acked"
    )


async def run_fleet(
    config: FleetConfig,
    devices: list[FleetDevice],
    *,
    stats: FleetStats | None = None,
    out: TextIO | None = None,
    phones: list[FleetPhone] | None = None,
) -> FleetStats:
    """Run the fleet until `config.duration` passes (or forever); return the final counters.
    `phones`, when given, is filled with the FleetPhone objects (tests drive them)."""
    stats = stats or FleetStats()
    out = out or sys.stdout
    db = Journal.memory_database()
    credentials = None
    if config.tls:
        roots = config.ca_file.read_bytes() if config.ca_file else None
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    fleet = [
        FleetPhone(
            device_id=d.device_id,
            client_id=d.client_id,
            password=d.password,
            journal=Journal(db, d.device_id),
            simulation=Simulation(config.simulation, device_id=d.device_id),
            stats=stats,
            server=config.server,
            credentials=credentials,
            backoff=Backoff(cap=config.backoff_cap),
        )
        for d in devices
    ]
    if phones is not None:
        phones.extend(fleet)
    stats.phones = len(fleet)
    rng = random.Random(config.simulation.seed)
    tasks: list[asyncio.Task[None]] = []

    async def start_later(phone: FleetPhone, delay: float) -> None:
        await asyncio.sleep(delay)
        await phone.run()

    async def report() -> None:
        while True:
            await asyncio.sleep(config.status_interval)
            print(status_line(stats), file=out, flush=True)

    reporter = asyncio.create_task(report())
    try:
        batch = max(1, config.batch_size)
        for index, phone in enumerate(fleet):
            window = (index // batch) * config.batch_interval
            jitter = rng.uniform(0, config.batch_interval)
            tasks.append(asyncio.create_task(start_later(phone, window + jitter)))
        if config.duration > 0:
            await asyncio.wait(tasks, timeout=config.duration)
        else:
            await asyncio.gather(*tasks)
    finally:
        for task in [*tasks, reporter]:
            task.cancel()
        await asyncio.gather(*tasks, reporter, return_exceptions=True)
        db.close()
    print(status_line(stats), file=out, flush=True)
    return stats


def run_fleet_blocking(config: FleetConfig, devices: list[FleetDevice]) -> int:
    """The CLI's entry: run the fleet on a fresh event loop; exit code 3 if every phone was
    refused (wrong file or wrong server), else 0."""
    _raise_file_limit()
    try:
        stats = asyncio.run(run_fleet(config, devices))
    except KeyboardInterrupt:
        return 130
    return 3 if devices and stats.refused == len(devices) else 0


def _raise_file_limit() -> None:
    """Each phone holds a TCP connection: lift the soft descriptor limit to the hard one."""
    with contextlib.suppress(ImportError, ValueError, OSError):
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
