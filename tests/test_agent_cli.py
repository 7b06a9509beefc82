"""`zimsend device run` as a user runs it: a real process, real flags, real exit codes."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _agent_double import DeviceLinkDouble, wait_until

from zimsend.agent.pairing import PairingInfo, format_pairing_uri
from zimsend.agent.simulation import read_outbox

PASSWORD = "s3cret-device-password"


@pytest.fixture
def double() -> Iterator[DeviceLinkDouble]:
    d = DeviceLinkDouble()
    d.add_device("dev1", password=PASSWORD)
    d.start()
    yield d
    d.stop()


def zimsend(*args: str) -> list[str]:
    return [sys.executable, "-m", "zimsend.cli", "device", *args]


def test_a_wrong_password_exits_3_with_a_clear_message_and_no_secret(
    double: DeviceLinkDouble, tmp_path: Path
) -> None:
    done = subprocess.run(
        zimsend(
            "run",
            "--server",
            f"127.0.0.1:{double.port}",
            "--client-id",
            "client_test",
            "--device-id",
            "dev1",
            "--password",
            "hunter2-typo",
            "--journal",
            str(tmp_path / "j.sqlite3"),
        ),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3
    assert "refused: wrong device password" in done.stderr
    assert "hunter2-typo" not in done.stderr + done.stdout
    assert double.refusals == 1


def test_missing_credentials_exit_2_naming_the_flags(tmp_path: Path) -> None:
    done = subprocess.run(
        zimsend("run", "--server", "127.0.0.1:1"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--client-id" in done.stderr
    assert "--pairing" in done.stderr


def test_help_lists_the_three_backends() -> None:
    done = subprocess.run(
        zimsend("run", "--help"), check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "{simulator,modem,termux}" in done.stdout
    assert "--gammu-config" in done.stdout
    assert "--sim-slot" in done.stdout


def test_the_modem_backend_without_a_gammurc_exits_2_naming_the_flag(tmp_path: Path) -> None:
    base = (
        "run",
        "--server",
        "127.0.0.1:1",
        "--client-id",
        "c",
        "--device-id",
        "d",
        "--password",
        "p",
        "--backend",
        "modem",
    )
    done = subprocess.run(zimsend(*base), check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--gammu-config" in done.stderr
    missing = tmp_path / "nowhere" / "gammurc"
    done = subprocess.run(
        zimsend(*base, "--gammu-config", str(missing)),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert str(missing) in done.stderr


def test_a_server_without_port_exits_2() -> None:
    done = subprocess.run(
        zimsend(
            "run",
            "--server",
            "sms.example.com",
            "--client-id",
            "c",
            "--device-id",
            "d",
            "--password",
            "p",
        ),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "needs a port" in done.stderr


def test_a_bad_pairing_uri_exits_2_saying_what_is_wrong() -> None:
    done = subprocess.run(
        zimsend("run", "--pairing", "zimsend://pair?server=h:1"),
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "missing client_id" in done.stderr


@pytest.mark.parametrize(("stop", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
def test_a_paired_device_sends_logs_state_changes_and_stops_on_a_signal(
    double: DeviceLinkDouble, tmp_path: Path, stop: signal.Signals, code: int
) -> None:
    uri = format_pairing_uri(
        PairingInfo(f"127.0.0.1:{double.port}", "client_test", "dev1", PASSWORD)
    )
    outbox = tmp_path / "outbox.jsonl"
    proc = subprocess.Popen(
        zimsend(
            "run",
            "--pairing",
            uri,
            "--journal",
            str(tmp_path / "j.sqlite3"),
            "--outbox",
            str(outbox),
            "--seed",
            "7",
            "--send-delay",
            "0.01",
            "--delivery-delay",
            "0.01",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: double.connected("dev1"), timeout=30)
        double.send_command("dev1", "msg_cli", "Bonjour depuis la CLI")
        wait_until(lambda: read_outbox(outbox) == {"msg_cli": 1})
        wait_until(lambda: len(double.reports("dev1")) == 2)  # sent + delivered
    finally:
        proc.send_signal(stop)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == code, err[-3000:]
    assert "connected to" in err
    assert "sending msg_cli" in err
    assert "reports acked" in err
    assert PASSWORD not in out + err
