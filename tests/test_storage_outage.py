"""Issue 12 item 9: a database that cannot be written — read-only, or on a full disk — is a
condition the server and the worker say once, answer clearly and get over without a restart.

Real processes: `zimsend serve` (and `zimsend worker`) behind the real Envoy, with a phone on
the device link. Expected, through Envoy: a send is 503 `UNAVAILABLE` in the JSON envelope with
a message about storage and `Retry-After`; `/healthz` is 503 (the replica's SmsService health is
NOT_SERVING) while calls still reach the server; a phone is refused with UNAVAILABLE and no SQL
or exception text; each process logs one line when the condition starts and one when it ends,
no traceback; once the disk is writable again everything works in the same processes.

How the disk is broken — the tests run as root, and root ignores file modes, so `chmod` would
test nothing. What binds root too, checked in this container:

- read-only: the data folder is a bind mount, remounted `ro` (`mount -o remount,ro,bind`)
  before the server starts and `rw` again later. (A mount with files open for writing cannot
  be made read-only, which is why this is the "started while read-only" case of the issue.)
- full: the data folder is a small tmpfs (`mount -t tmpfs -o size=16m`) filled up by a filler
  file, which is deleted to free the space.

Both need CAP_SYS_ADMIN. Without it `mount` fails and so do these tests (CalledProcessError), on
purpose: a skipped test would hide that item 9 went unchecked.
"""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import httpx
import pytest
from _devices import RawPhone, wait_for
from _processes import ZIMSEND, Program, run_zimsend, start_server, zimsend_env
from conftest import TEST_PEPPER

from zimsend.gateway import EnvoyProcess, start_envoy
from zimsend.server.local_postgres import LocalPostgres

INTERNAL_WORDS = (
    "sqlite",
    "SQL",
    "OperationalError",
    "Traceback",
    "readonly database",
    "sqlalche",
    "INSERT",
    "SELECT",
)
HEALTH_CHECK_SECONDS = 0.5


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@contextlib.contextmanager
def _mounted(target: Path, *args: str) -> Iterator[None]:
    target.mkdir(parents=True, exist_ok=True)
    _mount(*args, str(target))
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, timeout=30)


class Account:
    """A client, an API key and a phone written before the disk is broken."""

    def __init__(self, data_dir: Path, env: dict[str, str]) -> None:
        from zimsend.server import accounts
        from zimsend.server.storage import Database

        run_zimsend(["admin", "migrate"], env)
        db = Database.from_url(
            env.get("ZIMSEND_DATABASE_URL") or f"sqlite:///{data_dir / 'zimsend.db'}"
        )
        try:
            pepper = TEST_PEPPER.encode()
            client = accounts.create_client(db, "outage")
            self.client_id = client.id
            self.api_key = accounts.create_api_key(db, pepper, client.id, "live").secret
            device = accounts.create_device(
                db, pepper, client.id, "phone", server_address="127.0.0.1:1"
            )
            self.device_id, self.password = device.device.id, device.password
        finally:
            db.dispose()

    @property
    def headers(self) -> dict[str, str]:
        return {"X-API-Key": self.api_key, "X-Client-ID": self.client_id}


def _envoy(tmp_path: Path, address: str) -> EnvoyProcess:
    return start_envoy(
        directory=tmp_path / "envoy",
        upstreams=(address,),
        public_port=0,
        device_port=0,
        admin_port=0,
        health_check_interval_seconds=HEALTH_CHECK_SECONDS,
    )


def _send(http: httpx.Client, account: Account) -> httpx.Response:
    return http.post(
        "/v1/sms/send",
        headers=account.headers,
        json={"to": "+33612345678", "message": "storage test"},
    )


def _healthz(http: httpx.Client) -> int:
    return http.get("/healthz").status_code


def _assert_storage_refusal(response: httpx.Response, word: str) -> None:
    """503 UNAVAILABLE in the envelope, about storage, with Retry-After, no internals."""
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["success"] is False, body
    assert body["error"]["code"] == "UNAVAILABLE", body
    message = body["error"]["message"]
    assert "storage" in message, message
    assert word in message, message
    assert int(response.headers["retry-after"]) >= 1
    assert response.headers["zimsend-error-code"] == "UNAVAILABLE"
    for internal in INTERNAL_WORDS:
        assert internal not in response.text, response.text


def _stays(predicate: Callable[[], object], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not predicate():
            return False
        time.sleep(0.1)
    return True


def _lines(program: Program, event: str) -> int:
    return sum(1 for line in program.output().splitlines() if f'"{event}"' in line)


def _connect_phone(address: str, account: Account) -> RawPhone:
    return RawPhone(address, account.client_id, account.device_id, account.password)


def test_a_server_started_on_a_read_only_database_says_so_and_recovers_without_restart(
    tmp_path: Path,
) -> None:
    disk, data = tmp_path / "disk", tmp_path / "data"
    disk.mkdir()
    with _mounted(data, "--bind", str(disk)):
        env = zimsend_env(data, TEST_PEPPER)
        account = Account(data, env)
        _mount("-o", "remount,ro,bind", str(data))
        # The mechanism binds root: prove it.
        with pytest.raises(OSError, match="Read-only file system") as caught:
            (data / "probe").write_text("x")
        assert caught.value.errno == errno.EROFS

        server, address = start_server(data, env, tmp_path / "logs")
        worker = Program(
            [ZIMSEND, "worker"],
            env=env,
            log_path=tmp_path / "logs" / "worker.log",
            name="zimsend worker",
        )
        envoy = _envoy(tmp_path, address)
        with server, worker, envoy, httpx.Client(base_url=envoy.base_url, timeout=10) as http:
            # Calls reach the server (its overall health is SERVING) and get its answer.
            refused = wait_for(
                lambda: (
                    (r := _send(http, account)).status_code == 503
                    and r.headers.get("zimsend-error-code") == "UNAVAILABLE"
                    and r
                ),
                timeout=20,
                what="the server's own 503",
            )
            _assert_storage_refusal(refused, "read-only")
            assert _stays(lambda: _healthz(http) == 503, 4 * HEALTH_CHECK_SECONDS + 1)

            phone = _connect_phone(f"127.0.0.1:{envoy.device_port}", account)
            try:
                assert phone.ended.wait(10), "the phone's stream was neither refused nor welcomed"
                assert phone.error is not None
                assert phone.error.code() == grpc.StatusCode.UNAVAILABLE, phone.error
                details = phone.error.details() or ""
                assert "storage" in details, details
                for internal in INTERNAL_WORDS:
                    assert internal not in details, details
            finally:
                phone.close()

            for _ in range(20):  # many failures, one log line
                _send(http, account)
            for program in (server, worker):  # the worker waits instead of exiting
                wait_for(
                    lambda p=program: _lines(p, "storage.unavailable"),
                    timeout=30,
                    what=f"{program.name} saying storage is unavailable",
                )
                time.sleep(2)  # more failures meanwhile (the worker retries every second)
                assert program.alive()
                assert _lines(program, "storage.unavailable") == 1, program.output()[-3000:]
                assert "Traceback" not in program.output(), program.output()[-3000:]

            _mount("-o", "remount,rw,bind", str(data))
            wait_for(lambda: _healthz(http) == 200, timeout=20, what="/healthz 200 again")
            phone = _connect_phone(f"127.0.0.1:{envoy.device_port}", account)
            try:
                assert phone.hello().device_id == account.device_id
                sent = wait_for(
                    lambda: (r := _send(http, account)).status_code == 200 and r,
                    timeout=10,
                    what="a send accepted",
                )
                assert sent.json()["success"] is True
            finally:
                phone.close()
            for program in (server, worker):
                wait_for(
                    lambda p=program: _lines(p, "storage.writable_again") == 1,
                    timeout=10,
                    what=f"{program.name} saying storage is writable again",
                )
                assert program.alive()
                assert _lines(program, "storage.unavailable") == 1
                assert "Traceback" not in program.output(), program.output()[-3000:]


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    # Unbuffered: a buffered file keeps what did not fit and raises ENOSPC again on close.
    with filler.open("wb", buffering=0) as out:
        chunk = b"\0" * (1 << 16)
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
    return filler


def test_a_full_disk_is_503_and_not_ready_once_and_heals_when_space_is_freed(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    with _mounted(data, "-t", "tmpfs", "-o", "size=16m", "tmpfs"):
        env = zimsend_env(data, TEST_PEPPER)
        account = Account(data, env)
        server, address = start_server(data, env, tmp_path / "logs")
        worker = Program(
            [ZIMSEND, "worker"],
            env=env,
            log_path=tmp_path / "logs" / "worker.log",
            name="zimsend worker",
        )
        envoy = _envoy(tmp_path, address)
        with server, worker, envoy, httpx.Client(base_url=envoy.base_url, timeout=10) as http:
            envoy.wait_healthy()
            phone = _connect_phone(f"127.0.0.1:{envoy.device_port}", account)
            try:
                phone.hello()
                assert _send(http, account).status_code == 200

                filler = _fill(data)
                answers = [_send(http, account) for _ in range(30)]
                assert {r.status_code for r in answers} <= {200, 503}, [
                    (r.status_code, r.text) for r in answers if r.status_code not in (200, 503)
                ]
                refusals = [r for r in answers if r.status_code == 503]
                assert refusals, "no send was refused on a full disk"
                for refusal in refusals:  # never NO_DEVICE_AVAILABLE or another 503
                    _assert_storage_refusal(refusal, "full")
                wait_for(
                    lambda: _healthz(http) == 503,
                    timeout=4 * HEALTH_CHECK_SECONDS + 5,
                    what="/healthz 503 while the disk is full",
                )
                assert _stays(lambda: _healthz(http) == 503, 2)
                time.sleep(2)  # the worker's cycles meet the full disk too
                assert worker.alive()
                assert server.alive()
                for program in (server, worker):
                    assert _lines(program, "storage.unavailable") <= 1, program.output()[-3000:]
                    assert "Traceback" not in program.output(), program.output()[-3000:]
                assert _lines(server, "storage.unavailable") == 1

                filler.unlink()
                wait_for(lambda: _healthz(http) == 200, timeout=20, what="/healthz 200 again")
                sent = wait_for(
                    lambda: (r := _send(http, account)).status_code == 200 and r,
                    timeout=10,
                    what="a send accepted after space was freed",
                )
                assert sent.json()["success"] is True
                assert _lines(server, "storage.writable_again") == 1, server.output()[-3000:]
                assert not phone.ended.is_set(), phone.error  # the phone stayed connected
            finally:
                phone.close()
            assert worker.alive()
            for program in (server, worker):  # a worker that met the full disk checks again soon
                wait_for(
                    lambda p=program: (
                        _lines(p, "storage.unavailable") == _lines(p, "storage.writable_again")
                    ),
                    timeout=15,
                    what=f"{program.name} saying storage is writable again",
                )
                assert "Traceback" not in program.output()


def test_a_postgresql_outage_is_503_unreachable_and_heals_when_it_is_back(
    tmp_path: Path,
) -> None:
    """PostgreSQL stopped under a running server: sends are refused 503 UNAVAILABLE "cannot
    reach its database storage" (not 500 INTERNAL), health is NOT_SERVING; once PostgreSQL is
    back, sends work again without restarting anything."""
    postgres = LocalPostgres(Path(tempfile.mkdtemp(prefix="zs-pgout-")), database="zimsend")
    postgres.start()
    try:
        data = tmp_path / "data"
        env = zimsend_env(data, TEST_PEPPER, ZIMSEND_DATABASE_URL=postgres.url())
        account = Account(data, env)
        server, address = start_server(data, env, tmp_path / "logs")
        envoy = _envoy(tmp_path, address)
        with server, envoy, httpx.Client(base_url=envoy.base_url, timeout=10) as http:
            envoy.wait_healthy()
            phone = _connect_phone(f"127.0.0.1:{envoy.device_port}", account)
            try:
                phone.hello()
                assert _send(http, account).status_code == 200
            finally:
                phone.close()

            postgres.stop()
            answers = [_send(http, account) for _ in range(5)]
            assert {r.status_code for r in answers} == {503}, [r.text for r in answers]
            for refusal in answers:
                _assert_storage_refusal(refusal, "cannot reach")
                assert "postgres" not in refusal.text.lower(), refusal.text
            wait_for(
                lambda: _healthz(http) == 503,
                timeout=4 * HEALTH_CHECK_SECONDS + 5,
                what="/healthz 503 while PostgreSQL is down",
            )
            assert server.alive()

            postgres.start()
            wait_for(lambda: _healthz(http) == 200, timeout=30, what="/healthz 200 again")
            phone = _connect_phone(f"127.0.0.1:{envoy.device_port}", account)
            try:
                phone.hello()
                sent = wait_for(
                    lambda: (r := _send(http, account)).status_code == 200 and r,
                    timeout=20,
                    what="a send accepted once PostgreSQL is back",
                )
                assert sent.json()["success"] is True
            finally:
                phone.close()
            assert _lines(server, "storage.unavailable") == 1, server.output()[-3000:]
            wait_for(
                lambda: _lines(server, "storage.writable_again") == 1,
                timeout=10,
                what="the server saying storage is writable again",
            )
            assert "Traceback" not in server.output(), server.output()[-3000:]
    finally:
        postgres.stop()
        shutil.rmtree(postgres.directory, ignore_errors=True)
