"""A busy server sheds connects early, and the phones it turns away all come back (issue 7).

The server here may have only 2 connects in progress at once
(`ZIMSEND_DEVICE_CONNECTS_PENDING_MAX=2`). Two hand-driven streams that never say hello hold
both places, so every other phone is refused at once with UNAVAILABLE and a RetryInfo delay;
once they leave, the real agents and a fleet of 40 phones (started together: more than the
server takes at once) all come online, each having waited the delay it was given instead of
timing out. Real server, real agent and fleet processes; nothing of ours is mocked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from _devices import RawPhone, ServerDb, quick_tenant, start_agent, wait_for
from _processes import ZIMSEND, Program, start_server
from _processes import zimsend_env as make_env

from zimsend.agent.refusal import retry_delay

pytestmark = pytest.mark.slow
FLEET = 40
AGENTS = 2


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("shedding-data"),
        TEST_PEPPER,
        ZIMSEND_DEVICE_CONNECTS_PENDING_MAX="2",
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        # The silent holders must keep their places for the whole test, however slowly the
        # agents start: the default 10 s hello deadline would free them (test_device_link).
        ZIMSEND_DEVICE_HELLO_TIMEOUT_SECONDS="600",
    )


@pytest.fixture(scope="module")
def address(zimsend_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    program, address = start_server(
        Path(zimsend_env["ZIMSEND_DATA_DIR"]), zimsend_env, tmp_path_factory.mktemp("logs")
    )
    with program:
        yield address


def _devices(env: dict[str, str], address: str, count: int) -> tuple[str, list[dict[str, str]]]:
    from zimsend.server import accounts
    from zimsend.server.storage import Database

    channel = grpc.insecure_channel(address)
    tenant = quick_tenant(env, channel, "shedding")
    channel.close()
    db = Database.from_url(f"sqlite:///{Path(env['ZIMSEND_DATA_DIR']) / 'zimsend.db'}")
    try:
        devices = []
        for i in range(count):
            new = accounts.create_device(
                db,
                env["ZIMSEND_SECRET_PEPPER"].encode(),
                tenant.client_id,
                f"phone {i}",
                server_address=address,
            )
            devices.append(
                {
                    "client_id": tenant.client_id,
                    "device_id": new.device.id,
                    "password": new.password,
                }
            )
    finally:
        db.dispose()
    return tenant.client_id, devices


@pytest.mark.timeout(300)
def test_excess_connects_are_refused_with_a_retry_delay_and_all_phones_come_online(
    zimsend_env: dict[str, str],
    address: str,
    tmp_path: Path,
) -> None:
    client_id, devices = _devices(zimsend_env, address, FLEET + AGENTS + 3)
    holders = [RawPhone(address, client_id, d["device_id"], d["password"]) for d in devices[:2]]
    probe_device, agents, fleet = devices[2], devices[3 : 3 + AGENTS], devices[3 + AGENTS :]
    for holder in holders:  # admitted and authenticated, silent: both places are taken
        wait_for(
            lambda h=holder: dict(h.call.initial_metadata()).get("zimsend-admitted"),
            10,
            "the holder admitted",
        )

    refused = RawPhone(address, client_id, probe_device["device_id"], probe_device["password"])
    wait_for(refused.ended.is_set, 10, "the third connect refused")
    assert refused.error is not None
    assert refused.error.code() == grpc.StatusCode.UNAVAILABLE
    delay = retry_delay(refused.error)
    assert delay is not None, delay
    assert 0 < delay <= 30, delay
    refused.close()

    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps(fleet))
    programs = [
        start_agent(
            zimsend_env,
            address,
            client_id,
            d["device_id"],
            d["password"],
            tmp_path,
            name=f"agent{n}",
        )
        for n, d in enumerate(agents)
    ]
    programs.append(
        Program(
            [
                ZIMSEND,
                "device",
                "fleet",
                "--server",
                address,
                "--devices-file",
                str(devices_file),
                "--batch-size",
                str(FLEET),
                "--batch-interval",
                "0.1",
                "--status-interval",
                "1",
                "--duration",
                "240",
            ],
            env=zimsend_env,
            log_path=tmp_path / "fleet.log",
            name="fleet",
        )
    )
    server_db = ServerDb(Path(zimsend_env["ZIMSEND_DATA_DIR"]))

    def online() -> int:
        return int(
            server_db.query(
                "SELECT count(*) FROM devices WHERE client_id = ? AND online", client_id
            )[0][0]
        )

    try:
        for program in programs[:AGENTS]:  # the real agent honours the delay it was given
            wait_for(lambda p=program: "server busy" in p.output(), 30, "an agent refused")
        wait_for(lambda: _busy(programs[-1].output()) > 0, 30, "fleet phones refused")
        for holder in holders:
            holder.close()
        wait_for(
            lambda: online() == FLEET + AGENTS, 120, f"{FLEET + AGENTS} phones online", step=0.5
        )
        for program in programs:
            assert program.alive(), program.output()[-2000:]
        assert _busy(programs[-1].output()) > 0
    finally:
        for program in programs:
            program.stop()


def _busy(fleet_output: str) -> int:
    """The latest fleet status line's count of connects the server turned away as busy."""
    counts = re.findall(r"\((\d+) server busy\)", fleet_output)
    return int(counts[-1]) if counts else 0
