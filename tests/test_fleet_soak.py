"""Issue 4: 1,000 simulated phones from one fleet process stay connected to one real server
for a minute. Memory per phone is printed for the record (benchmarks report it; tests do not
assert timings or memory on a shared machine)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from _devices import ServerDb, wait_for
from _processes import ZIMSEND, Program
from conftest import TEST_PEPPER, RunningServer

PHONES = 1000
SOAK_SECONDS = 60


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_thousand_phones_stay_connected_for_a_minute(
    server: RunningServer, zimsend_env: dict[str, str], tmp_path: Path
) -> None:
    from zimsend.server import accounts
    from zimsend.server.storage import Database

    program, address = server
    data_dir = Path(zimsend_env["ZIMSEND_DATA_DIR"])
    db = Database.from_url(f"sqlite:///{data_dir / 'zimsend.db'}")
    try:
        client = accounts.create_client(db, "fleet")
        devices = []
        for i in range(PHONES):
            new = accounts.create_device(
                db, TEST_PEPPER.encode(), client.id, f"phone {i}", server_address=address
            )
            devices.append(
                {"client_id": client.id, "device_id": new.device.id, "password": new.password}
            )
    finally:
        db.dispose()
    devices_file = tmp_path / "devices.json"
    devices_file.write_text(json.dumps(devices))
    rss_before = _rss_kb(program.pid)
    server_db = ServerDb(data_dir)

    def online() -> int:
        return int(
            server_db.query(
                "SELECT count(*) FROM devices WHERE client_id = ? AND online", client.id
            )[0][0]
        )

    fleet = Program(
        [
            ZIMSEND,
            "device",
            "fleet",
            "--server",
            address,
            "--devices-file",
            str(devices_file),
            "--batch-size",
            "250",
            "--batch-interval",
            "0.5",
            "--status-interval",
            "10",
            "--duration",
            str(SOAK_SECONDS + 120),
        ],
        env=zimsend_env,
        log_path=tmp_path / "fleet.log",
        name="fleet",
    )
    with fleet:
        wait_for(lambda: online() == PHONES, 120, f"{PHONES} phones online", step=0.5)
        rss_connected = _rss_kb(program.pid)
        deadline = time.monotonic() + SOAK_SECONDS
        samples = []
        while time.monotonic() < deadline:
            samples.append(online())
            assert fleet.alive(), fleet.output()[-2000:]
            time.sleep(5)
        assert samples, samples
        assert min(samples) == PHONES, samples
        disconnects = server_db.query(
            "SELECT count(*) FROM outbox_events WHERE client_id = ? AND event_type = "
            "'device.disconnected'",
            client.id,
        )[0][0]
        assert disconnects == 0
    per_phone = (rss_connected - rss_before) / PHONES
    print(
        f"\nserver RSS: {rss_before} KB idle, {rss_connected} KB with {PHONES} phones "
        f"= {per_phone:.1f} KB per connected phone"
    )
