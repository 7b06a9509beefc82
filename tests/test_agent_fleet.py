"""`zimsend device fleet`: many simulated phones in one asyncio process (grpc.aio)."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _agent_double import DeviceLinkDouble, wait_until

from zimsend.agent.fleet import FleetConfig, FleetDevice, load_devices, run_fleet
from zimsend.agent.fleet_phone import FleetPhone
from zimsend.agent.simulation import SimulationConfig, read_outbox
from zimsend.v1 import device_link_pb2 as pb

N = 30


@pytest.fixture
def double() -> Iterator[DeviceLinkDouble]:
    d = DeviceLinkDouble()
    for i in range(N):
        d.add_device(f"dev{i}")
    d.start()
    yield d
    d.stop()


def fleet_config(double: DeviceLinkDouble, tmp_path: Path, duration: float) -> FleetConfig:
    return FleetConfig(
        server=f"127.0.0.1:{double.port}",
        batch_size=10,
        batch_interval=0.1,
        status_interval=0.5,
        duration=duration,
        simulation=SimulationConfig(
            seed=5, send_delay=0.005, delivery_delay=0.02, outbox=tmp_path / "outbox.jsonl"
        ),
    )


def test_a_fleet_connects_in_batches_sends_once_and_counts_refusals(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    devices = [FleetDevice("client_test", f"dev{i}", "pw") for i in range(N)]
    devices.append(FleetDevice("client_test", "intruder", "guess"))
    out = io.StringIO()
    phones: list[FleetPhone] = []

    async def main() -> None:
        run = asyncio.create_task(
            run_fleet(fleet_config(double, tmp_path, 6.0), devices, out=out, phones=phones)
        )
        await asyncio.to_thread(
            wait_until, lambda: all(double.connected(f"dev{i}") for i in range(N))
        )
        for i in range(N):
            double.send_command(f"dev{i}", f"msg_{i}", "x" * 170)
        await asyncio.to_thread(
            wait_until, lambda: len(read_outbox(tmp_path / "outbox.jsonl")) == N
        )
        for i in range(N):  # the server re-offers: re-reported, never re-sent
            double.send_command(f"dev{i}", f"msg_{i}", "x" * 170, redelivery=True)
        await asyncio.to_thread(
            wait_until, lambda: all(len(double.frames(f"dev{i}", "ack")) == 2 for i in range(N))
        )
        phones[0].inject_inbound()
        await asyncio.to_thread(wait_until, lambda: bool(double.frames("dev0", "inbound")))
        await asyncio.to_thread(wait_until, lambda: phones[0].stats.refused == 1)
        await asyncio.sleep(0.6)  # one more status line
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(main())
    assert read_outbox(tmp_path / "outbox.jsonl") == {f"msg_{i}": 1 for i in range(N)}
    reports = double.reports("dev3")
    assert {(r.part_index, r.outcome) for r in reports} >= {(0, 1), (1, 1), (0, 2), (1, 2)}
    # grpc.aio can hide a refusal behind INTERNAL when our hello races it (fleet_phone.py):
    # then the phone retries once or twice, and stops as soon as the refusal is visible.
    assert 1 <= double.refusals <= 3
    assert phones[0].stats.refused == 1
    assert phones[0].stats.sends == N
    assert f"{N}/{N + 1} connected, 1 refused" in out.getvalue()


def test_a_fleet_phone_answers_as_the_agent_does(double: DeviceLinkDouble, tmp_path: Path) -> None:
    """The fleet drives the agent's protocol (agent/protocol.py): a command for a SIM slot the
    phone lacks is refused as SIM_MISSING (nothing sent: the server may re-route it), a cancel
    that cannot be done says why, and a REPLACED Reconnect stops the phone."""
    phones: list[FleetPhone] = []

    async def main() -> None:
        run = asyncio.create_task(
            run_fleet(
                fleet_config(double, tmp_path, 60.0),
                [FleetDevice("client_test", "dev0", "pw")],
                out=io.StringIO(),
                phones=phones,
            )
        )
        await asyncio.to_thread(wait_until, lambda: double.connected("dev0"))
        double.push(
            "dev0",
            pb.ServerFrame(
                send=pb.SendCommand(
                    command_id="c1", message_id="m1", to="+263771234567", body="hi", sim_slot=1
                )
            ),
        )
        double.push(
            "dev0", pb.ServerFrame(cancel=pb.CancelCommand(command_id="c2", message_id="m0"))
        )
        await asyncio.to_thread(wait_until, lambda: len(double.frames("dev0", "ack")) == 2)
        double.push(
            "dev0", pb.ServerFrame(reconnect=pb.Reconnect(reason_code=pb.Reconnect.REPLACED))
        )
        await asyncio.to_thread(wait_until, lambda: phones[0].stats.stopped == 1)
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)

    asyncio.run(main())
    acks = {f.ack.command_id: f.ack for f in double.frames("dev0", "ack")}
    assert not acks["c1"].accepted
    assert (acks["c1"].error_code, acks["c1"].reason) == ("SIM_MISSING", "no SIM in slot 1")
    assert not acks["c2"].accepted
    assert acks["c2"].reason == "unknown message"
    assert read_outbox(tmp_path / "outbox.jsonl") == {}


def test_the_devices_file_is_validated(tmp_path: Path) -> None:
    good = tmp_path / "devices.json"
    good.write_text(json.dumps([{"client_id": "c", "device_id": "d", "password": "p"}]))
    assert load_devices(good) == [FleetDevice("c", "d", "p")]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"client_id": "c"}]))
    with pytest.raises(ValueError, match="entry 0"):
        load_devices(bad)


def test_the_fleet_command_prints_status_lines_and_stops_after_its_duration(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    devices = tmp_path / "devices.json"
    devices.write_text(
        json.dumps(
            [
                {"client_id": "client_test", "device_id": f"dev{i}", "password": "pw"}
                for i in range(5)
            ]
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "zimsend.cli",
            "device",
            "fleet",
            "--server",
            f"127.0.0.1:{double.port}",
            "--devices-file",
            str(devices),
            "--duration",
            "3",
            "--status-interval",
            "1",
            "--batch-size",
            "2",
            "--batch-interval",
            "0.2",
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "fleet: 5/5 connected" in done.stdout
