"""`zimsend up --postgres --replicas 2 --workers 2` (issue 17): the production layout of
docs/deploy.md on one machine, started with one command, on a private PostgreSQL cluster in
the data directory.

One stack for the file: it says "up" once both replicas serve; a send through Envoy is
delivered by the simulated phone; both replicas answer calls through Envoy; a replica killed
with -9 is restarted by `up` while the other keeps answering; Ctrl-C stops every child and
PostgreSQL. Plus the refusal of several replicas on SQLite.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _devices import wait_for
from _processes import ZIMSEND, Program, free_port, start_up, zimsend_env

pytestmark = pytest.mark.slow


def _free_ports_in_a_row(count: int) -> int:
    """A first port such that it and the next `count - 1` are free (replicas' gRPC ports)."""
    for _ in range(50):
        first = free_port()
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError("no consecutive free ports")


def _children(pid: int) -> dict[int, list[str]]:
    """Every live process below `pid` with its argv."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found: dict[int, list[str]] = {}
    todo = [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            try:
                argv = Path(f"/proc/{child}/cmdline").read_bytes().decode().split("\0")
            except OSError:
                continue
            found[child] = argv
            todo.append(child)
    return found


def _servers(pid: int) -> list[int]:
    return sorted(
        p for p, argv in _children(pid).items() if argv[1:4] == ["-m", "zimsend.cli", "serve"]
    )


class Stack:
    def __init__(self, program: Program, data_dir: Path, ports: dict[str, int]) -> None:
        self.program, self.data_dir, self.ports = program, data_dir, ports
        self.base = f"http://127.0.0.1:{ports['http']}"

    @property
    def auth(self) -> dict[str, str]:
        creds = json.loads((self.data_dir / "credentials.json").read_text())
        return {"X-API-Key": creds["api_key"], "X-Client-ID": creds["client_id"]}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    data_dir = tmp_path_factory.mktemp("upr") / "data"
    ports = {name: free_port() for name in ("http", "device", "admin")}
    ports["grpc"] = _free_ports_in_a_row(2)
    metrics = _free_ports_in_a_row(4)
    ports["metrics"], ports["worker-metrics"] = metrics, metrics + 1
    program, _ = start_up(
        data_dir,
        "--postgres",
        "--replicas",
        "2",
        "--workers",
        "2",
        "--with-simulated-device",
        ports=ports,
    )
    try:
        with program:
            program.wait_until(lambda: "ZimSend is up." in program.output(), timeout=180, what="up")
            yield Stack(program, data_dir, ports)
    finally:
        # As root the cluster lives in the postgres user's home (local_postgres).
        link = data_dir / "postgres"
        if link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)


def test_up_says_which_database_and_replicas(stack: Stack) -> None:
    out = stack.program.output()
    first = stack.ports["grpc"]
    assert f"127.0.0.1:{first}, 127.0.0.1:{first + 1} (servers)" in out
    assert "PostgreSQL, private cluster" in out
    assert "2 server replica(s), 2 worker(s)" in out
    assert len(_servers(stack.program.pid)) == 2
    # Every server and worker hears the others' commits (LISTEN/NOTIFY), not only its poll.
    assert out.count('"event": "wakeups.listening"') >= 4, out[-3000:]


def test_a_send_through_envoy_is_delivered(stack: Stack) -> None:
    sent = httpx.post(
        f"{stack.base}/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612345678", "message": "deux répliques"},
        timeout=30,
    )
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]

    def delivered() -> bool:
        reply = httpx.get(
            f"{stack.base}/v1/sms/status/{message_id}", headers=stack.auth, timeout=10
        )
        return bool(reply.json().get("status") == "delivered")

    wait_for(delivered, 60, "delivered")


def test_a_replica_killed_is_restarted_while_the_other_answers(stack: Stack) -> None:
    before = _servers(stack.program.pid)
    victim = before[0]
    subprocess.run(["kill", "-9", str(victim)], check=True)
    answers = 0
    for _ in range(20):
        reply = httpx.get(f"{stack.base}/v1/auth/test", headers=stack.auth, timeout=10)
        answers += reply.status_code == 200
        time.sleep(0.05)
    assert answers >= 18, "the other replica kept answering through Envoy"
    wait_for(
        lambda: len(servers := _servers(stack.program.pid)) == 2 and victim not in servers,
        60,
        "the killed replica restarted",
    )
    assert "was killed by SIGKILL; restarting it" in stack.program.output()


def _postmaster(pid: int) -> int | None:
    """The private cluster's postmaster below `pid` (its backends rename themselves
    "postgres: …"; the postmaster keeps its argv: …/postgres -D <data>)."""
    return next(
        (p for p, argv in _children(pid).items() if argv[0].endswith("/postgres") and "-D" in argv),
        None,
    )


def test_postgres_killed_is_restarted_and_sends_work_again(stack: Stack) -> None:
    victim = _postmaster(stack.program.pid)
    assert victim is not None
    subprocess.run(["kill", "-9", str(victim)], check=True)
    wait_for(lambda: "PostgreSQL restarted" in stack.program.output(), 60, "PostgreSQL restarted")
    assert "PostgreSQL was killed by SIGKILL; restarting it" in stack.program.output()
    assert _postmaster(stack.program.pid) not in (None, victim)

    def accepted() -> str | None:  # the replicas' pools reconnect on their own
        try:
            sent = httpx.post(
                f"{stack.base}/v1/sms/send",
                headers=stack.auth,
                timeout=10,
                json={"to": "+33612345678", "message": "après la panne"},
            )
        except httpx.HTTPError:
            return None
        return str(sent.json()["message_id"]) if sent.status_code == 200 else None

    message_id = wait_for(accepted, 60, "a send accepted after the restart")

    def delivered() -> bool:
        reply = httpx.get(
            f"{stack.base}/v1/sms/status/{message_id}", headers=stack.auth, timeout=10
        )
        return bool(reply.json().get("status") == "delivered")

    wait_for(delivered, 90, "the send after the restart delivered")


def test_ctrl_c_stops_every_child_and_postgres(stack: Stack) -> None:
    children = _children(stack.program.pid)
    assert any("postgres" in " ".join(argv) for argv in children.values())
    stack.program.kill(signal.SIGINT)
    assert stack.program.proc.wait(90) == 0
    wait_for(
        lambda: not any(Path(f"/proc/{p}").exists() for p in children),
        30,
        "every child and PostgreSQL gone",
    )
    assert "stopping PostgreSQL" in stack.program.output()


def test_several_replicas_need_postgres(tmp_path: Path) -> None:
    env = zimsend_env(tmp_path / "data", "unused")
    done = subprocess.run(
        [ZIMSEND, "up", "--data-dir", str(tmp_path / "data"), "--replicas", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "several replicas or workers need PostgreSQL" in done.stderr
