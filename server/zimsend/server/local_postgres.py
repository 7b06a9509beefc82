"""A private PostgreSQL cluster started from the installed binaries: `zimsend up --postgres`
(trying the multi-replica topology without a PostgreSQL server) and the test suite.

`LocalPostgres(directory)` runs `initdb` once in `directory/data` (kept: a later start reuses
the cluster) and starts `postgres` on it, reachable only through a Unix socket in `directory`
(no TCP port: nothing on the network can reach it, and the socket's folder is the owner's).
The test suite's variant (`ephemeral=True`) listens on 127.0.0.1 on a free port with
durability off (fsync, synchronous_commit, full_page_writes), since its data is thrown away.

`initdb` and `postgres` refuse to run as root; as root they run as the `postgres` system user
(created by the Debian package) in a directory chowned to it — which that user must be able to
reach: `cluster_directory` puts `zimsend up`'s cluster in that user's home then. The postmaster gets
PR_SET_PDEATHSIG (SIGQUIT, PostgreSQL's immediate shutdown), so even a SIGKILLed parent leaves
no server behind; the signal fires when the *thread* that started it exits: start it from the
main thread.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self

import psycopg

from zimsend.gateway.processes import free_port, spawn, terminate

__all__ = [
    "INSTALL_HINT",
    "LocalPostgres",
    "PostgresNotInstalled",
    "cluster_directory",
    "find_bindir",
]

INSTALL_HINT = (
    "PostgreSQL server binaries (initdb, postgres) were not found. Install them with "
    "`apt-get install postgresql-15` (any version >= 13 works; the binaries land in "
    "/usr/lib/postgresql/<version>/bin), put them on PATH, or set ZIMSEND_PG_BINDIR to the "
    "folder holding initdb and postgres."
)
#: Unix socket paths are limited to ~107 bytes (sun_path); the socket is
#: `<directory>/.s.PGSQL.<port>`.
MAX_SOCKET_DIR_CHARS = 90


class PostgresNotInstalled(RuntimeError):
    pass


def find_bindir() -> Path:
    """Where initdb and postgres live: $ZIMSEND_PG_BINDIR, PATH, `pg_config --bindir`, or
    Debian's /usr/lib/postgresql/<version>/bin (newest first)."""
    candidates: list[str] = []
    if os.environ.get("ZIMSEND_PG_BINDIR"):
        candidates.append(os.environ["ZIMSEND_PG_BINDIR"])
    if initdb := shutil.which("initdb"):
        candidates.append(str(Path(initdb).parent))
    if pg_config := shutil.which("pg_config"):
        out = subprocess.run([pg_config, "--bindir"], check=False, capture_output=True, text=True)
        candidates.append(out.stdout.strip())
    debian = glob.glob("/usr/lib/postgresql/*/bin")
    candidates += sorted(debian, key=lambda p: (len(p), p), reverse=True)  # newest first
    for candidate in candidates:
        if candidate and all((Path(candidate) / b).is_file() for b in ("initdb", "postgres")):
            return Path(candidate)
    raise PostgresNotInstalled(INSTALL_HINT)


def cluster_directory(data_dir: Path) -> Path:
    """Where `zimsend up --postgres` keeps the cluster of `data_dir`: `<data_dir>/postgres`.
    As root the server runs as the `postgres` user, which cannot enter a data directory of
    mode 700 (nor, often, its parents, such as /root): the cluster then lives in that user's
    home (`/var/lib/postgresql/zimsend-<hash of data_dir>`) and `<data_dir>/postgres` is a
    symbolic link to it."""
    here = data_dir / "postgres"
    if os.geteuid() != 0:
        return here
    home = Path(pwd.getpwnam("postgres").pw_dir)
    there = home / f"zimsend-{hashlib.sha256(str(data_dir).encode()).hexdigest()[:12]}"
    if not here.is_symlink() and not here.exists():
        here.symlink_to(there, target_is_directory=True)
    return there


def _die_with_parent() -> None:
    # Runs in the child after setuid (which would clear it), before exec.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGQUIT)  # PR_SET_PDEATHSIG


class LocalPostgres:
    """A PostgreSQL cluster in `directory` (see module doc). `start()`, `url()`, `stop()`."""

    def __init__(
        self,
        directory: Path,
        *,
        ephemeral: bool = False,
        max_connections: int = 300,
        database: str = "postgres",
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bindir = find_bindir()
        self.directory = Path(directory).resolve()
        self.ephemeral = ephemeral
        self.max_connections = max_connections
        self.database = database
        #: Server settings (`-c name=value`) over the defaults below.
        self.extra_settings = dict(settings or {})
        self.port = 0 if ephemeral else 5432
        self._proc: subprocess.Popen[bytes] | None = None
        self._as_user: dict[str, Any] = {}
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not ephemeral and len(str(self.directory)) > MAX_SOCKET_DIR_CHARS:
            raise ValueError(
                f"PostgreSQL's socket folder {self.directory} is longer than "
                f"{MAX_SOCKET_DIR_CHARS} characters (Unix socket path limit); "
                "use a shorter --data-dir"
            )
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.directory, pw.pw_uid, pw.pw_gid)
            self._as_user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._env = {"PATH": os.environ.get("PATH", ""), "LC_ALL": "C", "TZ": "UTC"}
        self.datadir = self.directory / "data"
        self.logfile = self.directory / "postgres.log"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def url(self, dbname: str | None = None) -> str:
        """The SQLAlchemy URL of `dbname` (default: the cluster's database)."""
        name = dbname or self.database
        if self.ephemeral:
            return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
        return f"postgresql+psycopg://postgres@/{name}?host={self.directory}&port={self.port}"

    def conninfo(self, dbname: str | None = None) -> str:
        """The same for psycopg (libpq) itself."""
        return self.url(dbname).replace("+psycopg", "")

    def start(self, timeout: float = 60.0) -> None:
        try:
            if not (self.datadir / "PG_VERSION").exists():
                self._initdb()
            for _attempt in range(3):  # a free port can be taken before postgres binds it
                if self.ephemeral:
                    self.port = free_port()
                if self._launch(timeout):
                    break
            else:
                raise RuntimeError(f"PostgreSQL did not start:\n{self.log_tail()}")
            if self.database != "postgres":
                self._create_database_once(self.database)
        except BaseException:
            self.stop()
            raise

    def _initdb(self) -> None:
        subprocess.run(
            [self.bindir / "initdb", "-D", self.datadir, "-U", "postgres", "--auth=trust",
             "-E", "UTF8", "--locale=C", *(["--no-sync"] if self.ephemeral else [])],
            cwd=self.directory, env=self._env, check=True, capture_output=True, **self._as_user,
        )  # fmt: skip

    def _settings(self) -> dict[str, str]:
        settings = {
            "port": str(self.port),
            "unix_socket_directories": str(self.directory),
            "max_connections": str(self.max_connections),
            "shared_buffers": "64MB" if self.ephemeral else "128MB",
            "timezone": "UTC",
        }
        if self.ephemeral:
            settings |= {
                "listen_addresses": "127.0.0.1",
                "fsync": "off",
                "synchronous_commit": "off",
                "full_page_writes": "off",
            }
        else:
            settings["listen_addresses"] = ""  # the Unix socket only
        return settings | self.extra_settings

    def _launch(self, timeout: float) -> bool:
        args: list[str] = [str(self.bindir / "postgres"), "-D", str(self.datadir)]
        for key, value in self._settings().items():
            args += ["-c", f"{key}={value}"]
        with self.logfile.open("ab") as log:
            proc = self._proc = spawn(
                args,
                cwd=self.directory,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
                **self._as_user,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                self._proc = None
                return False  # most likely the port was taken; the caller retries
            try:
                psycopg.connect(self.conninfo("postgres"), connect_timeout=2).close()
                return True
            except psycopg.OperationalError:
                time.sleep(0.05)
        raise RuntimeError(f"PostgreSQL did not accept connections:\n{self.log_tail()}")

    def _create_database_once(self, name: str) -> None:
        with psycopg.connect(self.conninfo("postgres"), autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if exists.fetchone() is None:
                conn.execute(f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster, which ends the sessions and keeps the data),
        SIGKILL to its group after 30 s."""
        proc, self._proc = self._proc, None
        if proc is not None:
            terminate(proc, 30, sig=signal.SIGINT, whole_group=False)

    def exit_code(self) -> int | None:
        """None while the postmaster runs; once it ended, its exit code (negative: the signal
        that killed it; 0 when it was never started or was stopped). `zimsend up` polls this
        to restart a cluster that died (`start()` again, from the main thread)."""
        proc = self._proc
        return 0 if proc is None else proc.poll()

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"
