"""A throwaway PostgreSQL server for the test suite, started from the installed binaries.

One server per test session (per xdist worker), in a temporary directory, listening on
127.0.0.1 on a free port, with trust authentication and durability switched off (fsync,
synchronous_commit, full_page_writes) because the data is thrown away. Each test that needs
a database gets a fresh one (`create_database`), which is much cheaper than a server.

`initdb` and `postgres` refuse to run as root; as root we run them as the `postgres` system
user (created by the Debian package) in a directory chowned to it. The postmaster gets
PR_SET_PDEATHSIG, so even a SIGKILLed pytest leaves no server behind.
"""

from __future__ import annotations

import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Self

import psycopg

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) were not found. The test suite starts its "
    "own PostgreSQL; install it with `apt-get install postgresql-15` (any version >= 13 works; "
    "the binaries land in /usr/lib/postgresql/<version>/bin), or set ZIMSEND_PG_BINDIR to the "
    "folder holding initdb and postgres."
)


class PostgresNotInstalled(RuntimeError):
    pass


def find_bindir() -> Path:
    """Where initdb and postgres live: $ZIMSEND_PG_BINDIR, `pg_config --bindir`, or Debian's."""
    candidates: list[str] = []
    if os.environ.get("ZIMSEND_PG_BINDIR"):
        candidates.append(os.environ["ZIMSEND_PG_BINDIR"])
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], check=False, capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(debian, key=lambda p: (len(p), p), reverse=True)  # newest first
    for candidate in candidates:
        if candidate and all((Path(candidate) / b).is_file() for b in ("initdb", "postgres")):
            return Path(candidate)
    raise PostgresNotInstalled(INSTALL_HINT)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    # Runs in the child after setuid (which would clear it), before exec. SIGQUIT is the
    # postmaster's "immediate shutdown": it stops its backends and releases shared memory.
    # (The signal fires when the *thread* that started the server exits: start it from the
    # main thread, as a session fixture does.)
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG


class PostgresServer:
    """A running PostgreSQL; `stop()` (or the context manager) removes every trace."""

    def __init__(self) -> None:
        self.bindir = find_bindir()
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmp = Path(tempfile.mkdtemp(prefix="zimsend-pg-"))
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self._tmp, pw.pw_uid, pw.pw_gid)
            self._as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}
        self.datadir = self._tmp / "data"
        self.logfile = self._tmp / "postgres.log"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def start(self, timeout: float = 60.0) -> None:
        try:
            self._initdb()
            for _attempt in range(3):  # a free port can be taken before postgres binds it
                self.port = _free_port()
                if self._launch(timeout):
                    return
            raise RuntimeError(f"PostgreSQL did not start:\n{self._log_tail()}")
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        subprocess.run(
            [self.bindir / "initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", "--no-sync"],
            cwd=self._tmp, env=self._env, check=True, capture_output=True, **self._as_user,
        )  # fmt: skip

    def _launch(self, timeout: float) -> bool:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self._tmp),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "300",
            "shared_buffers": "64MB",
            "timezone": "UTC",
        }
        args = [self.bindir / "postgres", "-D", self.datadir]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        with self.logfile.open("ab") as log:
            self._proc = subprocess.Popen(
                args, cwd=self._tmp, env=self._env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, **self._as_user,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                return False  # most likely the port was taken; the caller retries
            try:
                psycopg.connect(self.url().replace("+psycopg", ""), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not accept connections:\n{self._log_tail()}")

    def create_database(self, template: str | None = None) -> str:
        """A new empty database (or a copy of `template`); returns its SQLAlchemy URL."""
        name = f"test_{secrets.token_hex(6)}"
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with psycopg.connect(self.url().replace("+psycopg", ""), autocommit=True) as conn:
            conn.execute(sql)
        return self.url(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL after 10 s, then delete the directory."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(self._tmp, ignore_errors=True)

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
