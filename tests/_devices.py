"""Helpers for the device-link and dispatch tests (test_device_*.py, test_dispatch*.py).

Everything runs against real processes: `zimsend serve`, `zimsend admin`, and the real trio
agent `zimsend device run --backend simulator`. A `RawPhone` (a plain grpc bidi call driven by
the test) produces what the agent never would: a frame before hello, a duplicate report, a
second connection of the same device. `CuttingProxy` sits between a client (an agent, the
SDK) and the server and drops every connection on demand, or the next answers (an abrupt TCP
cut, as a mobile network does).
"""

from __future__ import annotations

import json
import queue
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from _processes import ZIMSEND, Program

from zimsend.v1 import common_pb2, devices_pb2, devices_pb2_grpc, sms_pb2, sms_pb2_grpc
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import device_link_pb2_grpc as pb_grpc


def wait_for(predicate: Callable[..., Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll until `predicate()` is truthy; returns its value; fails naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


@dataclass(frozen=True)
class Tenant:
    """A client with a live and a test key, and typed stubs that carry its credentials."""

    client_id: str
    live_key: str
    test_key: str
    channel: grpc.Channel

    def md(self, *, test: bool = False, device: str | None = None) -> tuple[tuple[str, str], ...]:
        out = [
            ("x-api-key", self.test_key if test else self.live_key),
            ("x-client-id", self.client_id),
        ]
        if device:
            out.append(("x-device-id", device))
        return tuple(out)

    @property
    def devices(self) -> devices_pb2_grpc.DeviceServiceStub:
        return devices_pb2_grpc.DeviceServiceStub(self.channel)

    @property
    def sms(self) -> sms_pb2_grpc.SmsServiceStub:
        return sms_pb2_grpc.SmsServiceStub(self.channel)

    def create_device(self, name: str = "phone") -> devices_pb2.CreateDeviceResponse:
        return self.devices.CreateDevice(
            devices_pb2.CreateDeviceRequest(name=name), metadata=self.md(), timeout=10
        )

    def get_device(self, device_id: str) -> devices_pb2.GetDeviceResponse:
        return self.devices.GetDevice(
            devices_pb2.GetDeviceRequest(device_id=device_id), metadata=self.md(), timeout=10
        )

    def online(self, device_id: str) -> bool:
        return self.get_device(device_id).status == common_pb2.online

    def update_device(self, device_id: str, **fields: Any) -> devices_pb2.UpdateDeviceResponse:
        return self.devices.UpdateDevice(
            devices_pb2.UpdateDeviceRequest(device_id=device_id, **fields),
            metadata=self.md(),
            timeout=10,
        )

    def send(self, to: str, text: str, *, test: bool = False, **fields: Any) -> str:
        reply = self.sms.SendSms(
            sms_pb2.SendSmsRequest(to=to, message=text, **fields),
            metadata=self.md(test=test),
            timeout=10,
        )
        return str(reply.message_id)

    def status(self, message_id: str, *, test: bool = False) -> sms_pb2.GetSmsStatusResponse:
        return self.sms.GetSmsStatus(
            sms_pb2.GetSmsStatusRequest(message_id=message_id),
            metadata=self.md(test=test),
            timeout=10,
        )


def new_tenant(admin: Callable[..., dict[str, Any]], channel: grpc.Channel, name: str) -> Tenant:
    """A client and its keys through the real `zimsend admin` CLI (three processes)."""
    client = admin("create-client", "--name", name)["client_id"]
    live = admin("create-key", "--client-id", client, "--name", "live")["api_key"]
    test = admin("create-key", "--client-id", client, "--name", "sandbox", "--test")["api_key"]
    return Tenant(client, live, test, channel)


def quick_tenant(env: dict[str, str], channel: grpc.Channel, name: str) -> Tenant:
    """The same, written through storage next to the running server (what `zimsend admin`
    does, without paying three interpreter start-ups per test)."""
    from zimsend.server import accounts
    from zimsend.server.storage import Database

    data_dir = Path(env["ZIMSEND_DATA_DIR"])
    pepper = env["ZIMSEND_SECRET_PEPPER"].encode()
    db = Database.from_url(
        env.get("ZIMSEND_DATABASE_URL") or f"sqlite:///{data_dir / 'zimsend.db'}"
    )
    try:
        client = accounts.create_client(db, name)
        live = accounts.create_api_key(db, pepper, client.id, "live")
        test = accounts.create_api_key(db, pepper, client.id, "sandbox", test=True)
    finally:
        db.dispose()
    return Tenant(client.id, live.secret, test.secret, channel)


def start_agent(
    env: dict[str, str],
    address: str,
    client_id: str,
    device_id: str,
    password: str,
    workdir: Path,
    *extra: str,
    name: str = "agent",
) -> Program:
    """The real device agent with the simulator backend; outbox and journal under workdir."""
    argv = [
        ZIMSEND,
        "device",
        "run",
        "--server",
        address,
        "--client-id",
        client_id,
        "--device-id",
        device_id,
        "--journal",
        str(workdir / f"{device_id}.journal"),
        "--outbox",
        str(workdir / "outbox.jsonl"),
        "--backend",
        "simulator",
        *extra,
    ]
    agent_env = dict(env, ZIMSEND_DEVICE_PASSWORD=password)
    return Program(argv, env=agent_env, log_path=workdir / f"{name}.log", name=name)


def outbox_lines(path: Path) -> list[dict[str, Any]]:
    """What the simulator "sent" (one JSON object per SMS)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class ServerDb:
    """Read-only look into the server's SQLite file (WAL: safe next to the server)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "zimsend.db"

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.path, timeout=30) as conn:
            return conn.execute(sql, args).fetchall()

    def events(self, client_id: str, prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
        rows = self.query(
            "SELECT event_type, payload FROM outbox_events WHERE client_id = ? AND event_type "
            "LIKE ? ORDER BY created_at, rowid",
            client_id,
            prefix + "%",
        )
        return [(kind, json.loads(payload)) for kind, payload in rows]

    def statuses(self, ids: list[str]) -> dict[str, str]:
        marks = ",".join("?" * len(ids))
        rows = self.query(f"SELECT id, status FROM messages WHERE id IN ({marks})", *ids)
        return dict(rows)


class RawPhone:
    """One DeviceLink stream driven by hand (sync grpc; a thread collects server frames)."""

    def __init__(
        self,
        address: str,
        client_id: str,
        device_id: str,
        password: str,
        *,
        heartbeats: bool = True,
    ) -> None:
        """`heartbeats`: send one every 0.5 s once welcomed (the server cuts a silent phone)."""
        self._out: queue.Queue[pb.DeviceFrame | None] = queue.Queue()
        self._heartbeats = heartbeats
        #: What each periodic heartbeat says (`beat()` changes it).
        self.heartbeat = pb.Heartbeat(battery=90, signal=4)
        self._beat_lock = threading.Lock()  # a periodic beat never overtakes `beat()`
        self.frames: queue.Queue[pb.ServerFrame] = queue.Queue()
        self.error: grpc.RpcError | None = None
        self.ended = threading.Event()
        self.channel = grpc.insecure_channel(address)
        stub = pb_grpc.DeviceLinkServiceStub(self.channel)
        metadata = (
            ("x-client-id", client_id),
            ("x-device-id", device_id),
            ("x-device-password", password),
        )
        self.call = stub.Connect(self._requests(), metadata=metadata)
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[pb.DeviceFrame]:
        while (frame := self._out.get()) is not None:
            yield frame

    def _read(self) -> None:
        try:
            for frame in self.call:
                self.frames.put(frame)
        except grpc.RpcError as exc:
            self.error = exc
        finally:
            self.ended.set()

    def send(self, **frame: Any) -> None:
        self._out.put(pb.DeviceFrame(**frame))

    def hello(self, **fields: Any) -> pb.Welcome:
        self.send(hello=pb.DeviceHello(model="Raw", app_version="raw-1", **fields))
        welcome = self.expect("welcome").welcome
        if self._heartbeats:
            threading.Thread(target=self._beat, daemon=True).start()
        return welcome

    def _beat(self) -> None:
        while not self.ended.wait(0.5):
            with self._beat_lock:
                self.send(heartbeat=self.heartbeat)

    def beat(self, heartbeat: pb.Heartbeat) -> None:
        """Say `heartbeat` now and in every periodic heartbeat from now on (as the agent does
        when what the phone can do changes)."""
        with self._beat_lock:
            self.heartbeat = heartbeat
            self.send(heartbeat=heartbeat)

    def expect(self, kind: str, timeout: float = 5.0) -> pb.ServerFrame:
        """The next frame of `kind` (skipping others); AssertionError if none comes."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                frame = self.frames.get(timeout=left)
            except queue.Empty:
                break
            if frame.WhichOneof("frame") == kind:
                return frame
        raise AssertionError(f"no {kind} frame within {timeout}s (stream error: {self.error})")

    def close(self) -> None:
        self._out.put(None)
        self.ended.set()
        self.call.cancel()
        self.channel.close()


_RESET = b"\x01\x00\x00\x00\x00\x00\x00\x00"  # SO_LINGER on, 0 s: close() sends an RST


class CuttingProxy:
    """A TCP proxy on 127.0.0.1 whose `cut()` resets every open connection at once, and which,
    while `lose_answers` > 0, resets the caller's connection at the first byte of an answer:
    the request reached the server, the answer never reaches the caller (a timeout or a cut
    mobile link after the server acted).

    `target` may change between cuts (a restarted server on a new port)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.lose_answers = 0
        #: Connections accepted so far (a retry on a new connection adds one).
        self.accepted = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            host, port = self.target.rsplit(":", 1)
            try:
                upstream = socket.create_connection((host, int(port)), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            for a, b, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, answers), daemon=True).start()

    def _lose_this_answer(self) -> bool:
        with self._lock:
            if self.lose_answers <= 0:
                return False
            self.lose_answers -= 1
            return True

    def _pipe(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and self._lose_this_answer():
                    sink.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                    # shutdown wakes the other direction's thread blocked in recv (a bare
                    # close would not, and no reset would reach the caller)
                    sink.shutdown(socket.SHUT_RDWR)
                    sink.close()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    @property
    def links(self) -> int:
        """Connections currently proxied."""
        with self._lock:
            return len(self._open) // 2

    def cut(self) -> int:
        """Reset every connection (SO_LINGER 0: an RST, not a polite FIN)."""
        with self._lock:
            sockets, self._open = self._open, []
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
                s.close()
            except OSError:
                pass
        return len(sockets) // 2

    def close(self) -> None:
        self._stopped = True
        self._listener.close()
        self.cut()
