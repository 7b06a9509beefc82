"""`zimsend up`: the README's run command, used the way a new user would.

One supervisor process starts the server, Envoy, the worker and a simulated phone on a fresh
data directory; a user then reads the printed credentials and talks REST and gRPC to it; a
child that crashes is restarted; Ctrl-C stops everything and leaves no process behind. Two
more stacks: one whose worker keeps crashing (`up` gives up and says so), one over TLS.

The tests of the `up` fixture run in file order on one stack: the first sends the moment the
ready line is printed, the kill -9 test comes before Ctrl-C, which ends the stack.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import ssl
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import NamedTuple
from urllib.parse import parse_qs, urlsplit

import grpc
import httpx
import pytest
import trio
from _certs import self_signed
from _devices import wait_for
from _processes import Program, start_up, zimsend_env

from zimsend.server import up as up_command
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


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def _child_pid(up_pid: int, verb: str) -> int | None:
    """The pid of `up`'s live child running `zimsend <verb>` (python -m zimsend.cli <verb>)."""
    for pid in _descendants(up_pid):
        argv = _cmdline(pid)
        if argv[1:4] == ["-m", "zimsend.cli", verb] and _alive(pid):
            return pid
    return None


class Up(NamedTuple):
    """The module's `zimsend up`: its process, data directory and ports."""

    program: Program
    data_dir: Path
    ports: dict[str, int]


def _auth(data_dir: Path) -> dict[str, str]:
    creds = json.loads((data_dir / "credentials.json").read_text())
    return {"X-API-Key": creds["api_key"], "X-Client-ID": creds["client_id"]}


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data_dir = tmp_path_factory.mktemp("up") / "data"
    program, ports = start_up(data_dir, "--with-simulated-device")
    with program:
        program.wait_until(lambda: "ZimSend is up." in program.output(), timeout=120, what="up")
        yield Up(program, data_dir, ports)


def test_a_send_right_after_the_ready_line_is_accepted_and_delivered(up: Up) -> None:
    """Ready means every part can do its job: the simulated phone is online already."""
    _, data_dir, ports = up
    headers = _auth(data_dir)
    base = f"http://127.0.0.1:{ports['http']}"
    sent = httpx.post(
        f"{base}/v1/sms/send",
        headers=headers,
        json={"to": "+33612345678", "message": "Rappel de rendez-vous demain"},
    )
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    status = wait_for(
        lambda: (
            (s := httpx.get(f"{base}/v1/sms/status/{message_id}", headers=headers).json()["status"])
            == "delivered"
            and s
        ),
        60,
        "delivered",
    )
    assert status == "delivered"
    outbox = data_dir / "simulated-outbox.jsonl"
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [line["message_id"] for line in lines].count(message_id) == 1


def test_first_start_prints_and_stores_credentials(up: Up) -> None:
    program, data_dir, ports = up
    path = data_dir / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    creds = json.loads(path.read_text())
    output = program.output()
    assert f"http://127.0.0.1:{ports['http']}/v1" in output
    assert f"127.0.0.1:{ports['device']}" in output
    assert creds["client_id"] in output
    assert creds["api_key"] in output
    assert creds["api_key"].startswith("zs_live_")


def test_up_prints_the_metrics_endpoints_and_they_answer(up: Up) -> None:
    """The server's and the worker's Prometheus endpoints, on loopback (docs/operations.md);
    the send of the first test is counted."""
    program, _, ports = up
    server = f"http://127.0.0.1:{ports['metrics']}/metrics"
    worker = f"http://127.0.0.1:{ports['worker-metrics']}/metrics"
    assert f"  metrics       {server} (server), {worker} (worker)" in program.output()
    server_text = httpx.get(server).text
    assert "zimsend_messages_accepted_total 1.0" in server_text
    assert "zimsend_phones_online 1.0" in server_text
    assert "zimsend_webhook_attempts_total" in httpx.get(worker).text


def test_rest_auth_test_with_printed_credentials(up: Up) -> None:
    _, data_dir, ports = up
    creds = json.loads((data_dir / "credentials.json").read_text())
    base = f"http://127.0.0.1:{ports['http']}"
    ok = httpx.get(
        f"{base}/v1/auth/test",
        headers={"X-API-Key": creds["api_key"], "X-Client-ID": creds["client_id"]},
    )
    assert ok.status_code == 200
    assert ok.json()["success"] is True
    assert ok.json()["client_id"] == creds["client_id"]

    wrong = httpx.get(
        f"{base}/v1/auth/test",
        headers={"X-API-Key": "zs_live_wrong", "X-Client-ID": creds["client_id"]},
    )
    assert wrong.status_code == 401
    body = wrong.json()
    assert body["success"] is False
    assert body["error"]["code"] == "INVALID_API_KEY"
    assert body["code"] == 16
    assert body["message"]

    broken = httpx.post(
        f"{base}/v1/sms/send",
        content=b"{not json",
        headers={
            "X-API-Key": creds["api_key"],
            "X-Client-ID": creds["client_id"],
            "Content-Type": "application/json",
        },
    )
    assert broken.status_code == 400
    assert broken.headers["content-type"].startswith("application/json")
    assert broken.json()["success"] is False
    assert broken.json()["error"]["code"] == "INVALID_REQUEST"


def test_grpc_through_envoy_and_directly(up: Up) -> None:
    _, data_dir, ports = up
    creds = json.loads((data_dir / "credentials.json").read_text())
    metadata = (("x-api-key", creds["api_key"]), ("x-client-id", creds["client_id"]))
    for port in (ports["http"], ports["grpc"]):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
                auth_pb2.AuthTestRequest(), metadata=metadata, timeout=10
            )
            assert reply.client_id == creds["client_id"]


def test_data_dir_and_database_files_are_private(up: Up) -> None:
    _, data_dir, _ = up
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for name in ("zimsend.db", "zimsend.db-wal", "zimsend.db-shm", "secret.key"):
        path = data_dir / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_insecure_webhooks_are_refused_without_the_flag(up: Up) -> None:
    _, data_dir, ports = up
    for url in ("http://127.0.0.1:9/hooks", "https://169.254.169.254/latest"):
        reply = httpx.post(
            f"http://127.0.0.1:{ports['http']}/v1/webhooks/configure",
            headers=_auth(data_dir),
            json={"url": url, "events": ["sms.sent"]},
        )
        assert reply.status_code == 400, reply.text
        assert reply.json()["error"]["code"] == "INVALID_WEBHOOK_URL"


def test_kill_9_of_the_server_is_healed(up: Up) -> None:
    """`up` restarts a crashed server; messages accepted before the crash are delivered."""
    program, data_dir, ports = up
    headers = _auth(data_dir)
    base = f"http://127.0.0.1:{ports['http']}"
    # The phone sends one SMS every 2.5 s (default pacing): most of these are still queued
    # when the server dies.
    accepted = []
    for n in range(3):
        reply = httpx.post(
            f"{base}/v1/sms/send",
            headers=headers,
            json={"to": "+33612345678", "message": f"before the crash {n}"},
        )
        assert reply.status_code == 200, reply.text
        accepted.append(reply.json()["message_id"])
    server = _child_pid(program.pid, "serve")
    assert server is not None
    os.kill(server, signal.SIGKILL)

    def answers() -> bool:
        try:
            return httpx.get(f"{base}/v1/auth/test", headers=headers, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(lambda: not _alive(server), 10, "the server gone")
    wait_for(answers, 30, "answering /v1/auth/test after the server's kill -9")
    assert _child_pid(program.pid, "serve") not in (None, server)
    assert program.alive()
    assert "server was killed by SIGKILL; restarting it" in program.output()

    def statuses() -> list[str]:
        return [
            httpx.get(f"{base}/v1/sms/status/{m}", headers=headers).json()["status"]
            for m in accepted
        ]

    wait_for(lambda: set(statuses()) == {"delivered"}, 90, f"all delivered ({statuses()})")


def test_kill_9_of_envoy_and_of_the_simulated_phone_is_healed(up: Up) -> None:
    program, data_dir, ports = up
    headers = _auth(data_dir)
    device_id = json.loads((data_dir / "credentials.json").read_text())["device_id"]
    base = f"http://127.0.0.1:{ports['http']}"
    envoy = next(
        pid
        for pid in _descendants(program.pid)
        if Path(_cmdline(pid)[0]).name == "envoy" and _alive(pid)
    )
    phone = _child_pid(program.pid, "device")
    assert phone is not None
    os.kill(envoy, signal.SIGKILL)
    os.kill(phone, signal.SIGKILL)

    def phone_online() -> bool:
        try:
            reply = httpx.get(f"{base}/v1/devices/{device_id}", headers=headers, timeout=2)
        except httpx.HTTPError:
            return False
        return reply.status_code == 200 and reply.json()["status"] == "online"

    wait_for(phone_online, 60, "Envoy answering and the restarted phone online")
    assert _child_pid(program.pid, "device") not in (None, phone)
    output = program.output()
    assert "envoy was killed by SIGKILL; restarting it" in output
    assert "simulated-device was killed by SIGKILL; restarting it" in output
    sent = httpx.post(
        f"{base}/v1/sms/send",
        headers=headers,
        json={"to": "+33612345678", "message": "after the restarts"},
    )
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    wait_for(
        lambda: (
            httpx.get(f"{base}/v1/sms/status/{message_id}", headers=headers).json()["status"]
            == "delivered"
        ),
        60,
        "delivered by the restarted phone",
    )


def test_a_later_start_rewrites_the_pairing_uri_when_tls_changes(tmp_path: Path) -> None:
    env = zimsend_env(tmp_path, "test-pepper-not-secret-0123456789")
    first, created = up_command.ensure_credentials(tmp_path, env, "127.0.0.1:8081")
    assert created
    assert "tls=1" not in first["pairing_uri"]
    again, created = up_command.ensure_credentials(tmp_path, env, "127.0.0.1:8081", tls=True)
    assert not created
    assert again["device_password"] == first["device_password"]
    stored = json.loads((tmp_path / "credentials.json").read_text())
    assert parse_qs(urlsplit(stored["pairing_uri"]).query)["tls"] == ["1"]
    assert stat.S_IMODE((tmp_path / "credentials.json").stat().st_mode) == 0o600


def test_ctrl_c_leaves_no_process_behind(up: Up) -> None:
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


def test_a_child_that_keeps_crashing_stops_the_stack(tmp_path: Path) -> None:
    """Restarts have a limit: the 5th crash within a minute stops everything, exit 1."""
    program, _ = start_up(tmp_path / "data")
    with program:
        program.wait_until(lambda: "ZimSend is up." in program.output(), timeout=120, what="up")
        children = _descendants(program.pid)
        killed: list[int] = []
        while program.alive() and len(killed) < 5:
            worker = wait_for(
                lambda: _child_pid(program.pid, "worker") or not program.alive(),
                30,
                "a worker running",
            )
            if worker is True:
                break
            os.kill(worker, signal.SIGKILL)
            killed.append(worker)
            wait_for(lambda w=worker: not _alive(w), 10, "the worker gone")
        program.proc.wait(60)
        output = program.output()
        assert program.proc.returncode == 1, output[-3000:]
        assert len(killed) == 5, output[-3000:]
        assert "worker was killed by SIGKILL; restarting it" in output
        assert "stopped because worker kept crashing (5 times within 60 s)" in output
        wait_for(lambda: not [pid for pid in children if _alive(pid)], 10, "every child gone")


def test_tls_stack_end_to_end(tmp_path: Path) -> None:
    """--tls-cert/--tls-key: ready over https, the simulated phone on TLS (a send reaches it),
    a pairing URI with tls=1; --allow-insecure-webhooks lets a local receiver in."""
    cert, key = self_signed(tmp_path)
    data_dir = tmp_path / "data"
    program, ports = start_up(
        data_dir,
        "--with-simulated-device",
        "--tls-cert",
        str(cert),
        "--tls-key",
        str(key),
        "--allow-insecure-webhooks",
    )
    with program:
        program.wait_until(lambda: "ZimSend is up." in program.output(), timeout=120, what="up")
        output = program.output()
        base = f"https://127.0.0.1:{ports['http']}"
        assert f"{base}/v1" in output
        creds = json.loads((data_dir / "credentials.json").read_text())
        uri = creds["pairing_uri"]
        assert uri in output
        assert parse_qs(urlsplit(uri).query)["tls"] == ["1"]

        trust = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(base_url=base, headers=_auth(data_dir), verify=trust) as http:
            assert http.get("/v1/auth/test").status_code == 200
            sent = http.post("/v1/sms/send", json={"to": "+33612345678", "message": "over TLS"})
            assert sent.status_code == 200, sent.text  # the phone is online at the ready line
            message_id = sent.json()["message_id"]
            wait_for(
                lambda: http.get(f"/v1/sms/status/{message_id}").json()["status"] == "delivered",
                60,
                "delivered over TLS",
            )
            hook = http.post(
                "/v1/webhooks/configure",
                json={"url": "http://127.0.0.1:9/hooks", "events": ["sms.sent"]},
            )
            assert hook.status_code == 200, hook.text
            # A phone added through the API is paired with Envoy's phone listener, over TLS.
            added = http.post("/v1/devices", json={"name": "second phone"}).json()
            pairing = urlsplit(added["pairing_uri"])
            query = parse_qs(pairing.query)
            assert query["server"] == [f"127.0.0.1:{ports['device']}"]
            assert query["tls"] == ["1"]

        os.kill(program.pid, signal.SIGINT)
        program.proc.wait(60)
        assert program.proc.returncode == 0, program.output()[-3000:]
        assert "did not answer 200" not in program.output()


class _StandInEnvoy(ThreadingHTTPServer):
    """Answers `up`'s readiness looks: /healthz at once, the phone online from the 4th look."""

    def __init__(self) -> None:
        self.device_looks = 0

        class Handler(BaseHTTPRequestHandler):
            def do_GET(handler) -> None:  # noqa: N802
                if handler.path.startswith("/v1/devices/"):
                    self.device_looks += 1
                    online = self.device_looks > 3
                    body = json.dumps({"status": "online" if online else "offline"}).encode()
                else:
                    body = b"{}"
                handler.send_response(200)
                handler.send_header("Content-Length", str(len(body)))
                handler.end_headers()
                handler.wfile.write(body)

            def log_message(handler, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def _ready_args(port: int) -> argparse.Namespace:
    return argparse.Namespace(
        host="127.0.0.1",
        http_port=port,
        device_port=1,
        grpc_port=2,
        tls_cert=None,
        with_simulated_device=True,
        allow_insecure_webhooks=False,
    )


CREDS = {
    "client_id": "client_x",
    "api_key": "zs_live_x",
    "device_id": "device_x",
    "device_password": "pw",
    "pairing_uri": "zimsend://pair?x",
}


def test_the_ready_line_waits_for_the_simulated_phone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real-stack test above cannot force a slow phone; a stand-in Envoy whose phone comes
    online only at the 4th look can."""
    envoy = _StandInEnvoy()
    try:
        supervisor = up_command.Supervisor([])
        trio.run(
            up_command._announce_when_ready,
            _ready_args(envoy.server_port),
            tmp_path,
            CREDS,
            False,
            supervisor,
        )
    finally:
        envoy.shutdown()
    assert "ZimSend is up." in capsys.readouterr().out
    assert envoy.device_looks == 4
    assert not supervisor.stop_requested.is_set()


def test_a_phone_that_never_comes_online_stops_the_stack(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(up_command, "READY_TIMEOUT_SECONDS", 0.5)
    envoy = _StandInEnvoy()
    envoy.device_looks = -1_000_000  # offline for good
    try:
        supervisor = up_command.Supervisor([])
        trio.run(
            up_command._announce_when_ready,
            _ready_args(envoy.server_port),
            tmp_path,
            CREDS,
            False,
            supervisor,
        )
    finally:
        envoy.shutdown()
    assert "ZimSend is up." not in capsys.readouterr().out
    assert supervisor.stop_requested.is_set()
    assert supervisor.failure is not None
    assert "simulated phone was not online" in supervisor.failure
