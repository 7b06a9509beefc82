"""`zimsend up`: the README's run command, used the way a new user would.

One supervisor process starts the server, Envoy, the worker and a simulated phone on a fresh
data directory; a user then reads the printed credentials and talks REST and gRPC to it; Ctrl-C
stops everything and leaves no process behind.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import grpc
import httpx
import pytest
from _processes import ZIMSEND, Program, free_port, zimsend_env

from zimsend.v1 import auth_pb2, auth_pb2_grpc


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children are in their own sessions, not its group)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    data_dir = tmp_path_factory.mktemp("up") / "data"
    ports = {name: free_port() for name in ("http", "device", "grpc", "admin")}
    env = zimsend_env(data_dir, "unused")
    del env["ZIMSEND_SECRET_PEPPER"]  # like a user: the pepper is generated in the data dir
    program = Program(
        [ZIMSEND, "up", "--data-dir", str(data_dir), "--http-port", str(ports["http"]),
         "--device-port", str(ports["device"]), "--grpc-port", str(ports["grpc"]),
         "--admin-port", str(ports["admin"]), "--with-simulated-device"],
        env=env, log_path=data_dir.parent / "up.log", name="zimsend up",
    )
    with program:
        program.wait_until(lambda: "ZimSend is up." in program.output(), timeout=90, what="up")
        yield program, data_dir, ports


def test_first_start_prints_and_stores_credentials(up) -> None:  # type: ignore[no-untyped-def]
    program, data_dir, ports = up
    path = data_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = json.loads(path.read_text())
    output = program.output()
    assert f"http://127.0.0.1:{ports['http']}/v1" in output
    assert f"127.0.0.1:{ports['device']}" in output
    assert creds["client_id"] in output and creds["api_key"] in output
    assert creds["api_key"].startswith("zs_live_")


def test_rest_auth_test_with_printed_credentials(up) -> None:  # type: ignore[no-untyped-def]
    _, data_dir, ports = up
    creds = json.loads((data_dir / "credentials.json").read_text())
    base = f"http://127.0.0.1:{ports['http']}"
    ok = httpx.get(f"{base}/v1/auth/test",
                   headers={"X-API-Key": creds["api_key"], "X-Client-ID": creds["client_id"]})
    assert ok.status_code == 200
    assert ok.json()["success"] is True and ok.json()["client_id"] == creds["client_id"]

    wrong = httpx.get(f"{base}/v1/auth/test",
                      headers={"X-API-Key": "zs_live_wrong", "X-Client-ID": creds["client_id"]})
    assert wrong.status_code == 401
    body = wrong.json()
    assert body["success"] is False and body["error"]["code"] == "INVALID_API_KEY"
    assert body["code"] == 16 and body["message"]

    broken = httpx.post(f"{base}/v1/sms/send", content=b"{not json",
                        headers={"X-API-Key": creds["api_key"], "X-Client-ID": creds["client_id"],
                                 "Content-Type": "application/json"})
    assert broken.status_code == 400
    assert broken.headers["content-type"].startswith("application/json")
    assert broken.json()["success"] is False and broken.json()["error"]["code"] == "INVALID_REQUEST"


def test_grpc_through_envoy_and_directly(up) -> None:  # type: ignore[no-untyped-def]
    _, data_dir, ports = up
    creds = json.loads((data_dir / "credentials.json").read_text())
    metadata = (("x-api-key", creds["api_key"]), ("x-client-id", creds["client_id"]))
    for port in (ports["http"], ports["grpc"]):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
                auth_pb2.AuthTestRequest(), metadata=metadata, timeout=10
            )
            assert reply.client_id == creds["client_id"]


def test_an_sms_reaches_the_simulated_phone(up) -> None:  # type: ignore[no-untyped-def]
    _, data_dir, ports = up
    creds = json.loads((data_dir / "credentials.json").read_text())
    base = f"http://127.0.0.1:{ports['http']}"
    headers = {"X-API-Key": creds["api_key"], "X-Client-ID": creds["client_id"]}
    deadline = time.monotonic() + 30
    while True:  # the phone connects a moment after /healthz turns green
        device = httpx.get(f"{base}/v1/devices/{creds['device_id']}", headers=headers).json()
        if device.get("status") == "online" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert device["status"] == "online"
    sent = httpx.post(f"{base}/v1/sms/send", headers=headers,
                      json={"to": "+33612345678", "message": "Rappel de rendez-vous demain"})
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    outbox = data_dir / "simulated-outbox.jsonl"
    status = None
    while time.monotonic() < deadline + 30:
        status = httpx.get(f"{base}/v1/sms/status/{message_id}", headers=headers).json()["status"]
        if status == "delivered":
            break
        time.sleep(0.2)
    assert status == "delivered"
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [line["message_id"] for line in lines].count(message_id) == 1


def test_ctrl_c_leaves_no_process_behind(up) -> None:  # type: ignore[no-untyped-def]
    program, _, _ = up
    children = _descendants(program.pid)
    assert len(children) >= 4  # server, envoy, worker, simulated phone
    os.kill(program.pid, signal.SIGINT)  # Ctrl-C reaches the supervisor only
    program.proc.wait(30)
    assert program.proc.returncode == 0, program.output()[-3000:]
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in children if _alive(pid)]
