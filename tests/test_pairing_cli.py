"""Pairing a real phone (issue 11, item 3): `zimsend admin create-device` shows the pairing URI
and, on a terminal, a QR code of it; `POST /v1/devices` gives the same URI for the same address.

The real command runs as a subprocess against a fresh data directory; "a terminal" is a
pseudo-terminal, as a user's shell gives it. The QR code is proved right by decoding the printed
text with a real QR reader (zxing-cpp, see tests/_qr.py), not by re-rendering it.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from _processes import ZIMSEND, run_zimsend
from _qr import decode_qr_lines, qr_lines
from conftest import Admin, Stack

from zimsend.agent.pairing import parse_pairing_uri

PHONE_ADDRESS = "192.168.1.20:8081"


@pytest.fixture
def admin_env(tmp_path: Path) -> dict[str, str]:
    from _processes import zimsend_env
    from conftest import TEST_PEPPER

    return zimsend_env(tmp_path / "data", TEST_PEPPER)


def run_on_terminal(argv: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run `argv` with its stdout on a pseudo-terminal; (exit code, stdout text, stderr)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        argv, env=env, stdout=terminal, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    os.close(terminal)
    chunks: list[bytes] = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(controller)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    return proc.wait(30), b"".join(chunks).decode().replace("\r\n", "\n"), stderr


def first_json_object(text: str) -> dict[str, Any]:
    found: dict[str, Any] = json.JSONDecoder().raw_decode(text)[0]
    return found


def create_device_argv(client_id: str, *extra: str, address: str = PHONE_ADDRESS) -> list[str]:
    return [
        ZIMSEND,
        "admin",
        "create-device",
        "--client-id",
        client_id,
        "--name",
        "pixel",
        "--server-address",
        address,
        *extra,
    ]


def test_on_a_terminal_create_device_prints_the_uri_and_a_qr_code_of_it(
    admin_env: dict[str, str],
) -> None:
    client = run_zimsend(["admin", "create-client", "--name", "qr"], admin_env)
    code, out, err = run_on_terminal(create_device_argv(client["client_id"]), admin_env)
    assert code == 0, err
    created = first_json_object(out)
    uri = created["pairing_uri"]
    info = parse_pairing_uri(uri)
    assert (info.server, info.client_id, info.device_id, info.password) == (
        PHONE_ADDRESS,
        client["client_id"],
        created["device_id"],
        created["device_password"],
    )
    assert f"pairing URI: {uri}\n" in out  # plain, for copy and paste
    lines = qr_lines(out)
    assert len(lines) > 20
    assert decode_qr_lines(lines) == [uri]
    assert created["device_password"] not in err  # stderr may end up in a log
    assert "cannot reach" not in err  # a LAN address is what a phone needs


def test_for_scripts_the_output_stays_one_json_object(admin_env: dict[str, str]) -> None:
    """Piped: JSON alone, as every admin command (no flag needed); on a terminal `--no-qr`
    gives the same; `--qr` draws the code even into a pipe."""
    client = run_zimsend(["admin", "create-client", "--name", "qr"], admin_env)
    piped = subprocess.run(
        create_device_argv(client["client_id"]),
        env=admin_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert piped.returncode == 0, piped.stderr
    assert json.loads(piped.stdout)["pairing_uri"].startswith("zimsend://pair?")

    code, out, err = run_on_terminal(create_device_argv(client["client_id"], "--no-qr"), admin_env)
    assert code == 0, err
    assert json.loads(out)["device_id"].startswith("device_")

    forced = subprocess.run(
        create_device_argv(client["client_id"], "--qr", address="127.0.0.1:8081"),
        env=admin_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert forced.returncode == 0, forced.stderr
    uri = first_json_object(forced.stdout)["pairing_uri"]
    assert decode_qr_lines(qr_lines(forced.stdout)) == [uri]
    assert "127.0.0.1:8081, which a phone cannot reach" in forced.stderr


@pytest.mark.slow
def test_rest_and_cli_give_the_same_pairing_uri_for_the_same_address(
    stack: Stack, admin: Admin
) -> None:
    """Same format and same fields: only the new device's id and password differ."""
    created = httpx.post(
        f"{stack.base_url}/v1/devices", headers=stack.auth, json={"name": "rest phone"}
    ).json()
    rest_uri = created["pairing_uri"]
    address = parse_pairing_uri(rest_uri).server
    cli = admin(
        "create-device",
        "--client-id",
        stack.client_id,
        "--name",
        "cli phone",
        "--server-address",
        address,
    )

    def without_secrets(uri: str, device_id: str, password: str) -> tuple[object, ...]:
        parts = urlsplit(uri)
        query = parse_qsl(parts.query, keep_blank_values=True)
        assert ("device_id", device_id) in query
        assert ("password", password) in query
        names_in_order = [name for name, _ in query]
        public = [(name, value) for name, value in query if name not in ("device_id", "password")]
        return parts.scheme, parts.netloc, names_in_order, public

    assert without_secrets(
        rest_uri, created["device_id"], created["device_password"]
    ) == without_secrets(cli["pairing_uri"], cli["device_id"], cli["device_password"])


def test_tls_and_the_phone_address_come_from_the_flags_or_the_settings(
    admin_env: dict[str, str],
) -> None:
    """A server whose phone listener is TLS pairs phones with tls=1; the address defaults to
    the `device_link_address` setting the server also uses for POST /v1/devices."""
    client = run_zimsend(["admin", "create-client", "--name", "tls"], admin_env)["client_id"]
    flagged = run_zimsend(
        [
            "admin",
            "create-device",
            "--client-id",
            client,
            "--name",
            "a",
            "--server-address",
            PHONE_ADDRESS,
            "--tls",
        ],
        admin_env,
    )
    info = parse_pairing_uri(flagged["pairing_uri"])
    assert info.tls
    assert info.server == PHONE_ADDRESS
    configured = dict(
        admin_env, ZIMSEND_DEVICE_LINK_ADDRESS="sms.example.org:8443", ZIMSEND_DEVICE_LINK_TLS="1"
    )
    from_settings = run_zimsend(
        ["admin", "create-device", "--client-id", client, "--name", "b"], configured
    )
    info = parse_pairing_uri(from_settings["pairing_uri"])
    assert info.tls
    assert info.server == "sms.example.org:8443"
    plain = run_zimsend(
        ["admin", "create-device", "--client-id", client, "--name", "c", "--no-tls"], configured
    )
    assert not parse_pairing_uri(plain["pairing_uri"]).tls
