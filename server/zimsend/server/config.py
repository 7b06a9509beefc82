"""Server settings: environment variables, an optional config file, and a generated pepper.

Every setting is read from `ZIMSEND_<NAME>` (e.g. `ZIMSEND_DATABASE_URL`). `ZIMSEND_CONFIG` may
point to a TOML file (top-level keys are the field names: `database_url = "..."`) or to a
`.env` file (`ZIMSEND_DATABASE_URL=...`). Precedence, highest first: explicit keyword
arguments, environment, config file, defaults.

Secrets (`database_url`, which may hold a password, and `secret_pepper`) are `SecretStr`, so a
`repr()` of the settings, a log line or a traceback never shows them.

Why a pepper, and why generate it: API keys, device passwords and OTP codes are stored as
HMAC-SHA256 keyed with the pepper, and webhook signing secrets are encrypted with a key derived
from it. A copy of the database alone (a leaked backup) therefore reveals no usable credential.
The pepper must stay the same for the life of an installation: if it changes, every stored key
and device password stops matching. So when `ZIMSEND_SECRET_PEPPER` is unset, the first process
that needs it generates one and stores it in `<data_dir>/secret.key` (mode 600, outside the
database), and every later process — server, worker, CLI — reads that file. Several replicas on
different machines must share one pepper: set `ZIMSEND_SECRET_PEPPER` for them explicitly.
"""

from __future__ import annotations

import os
import secrets
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PositiveInt, SecretStr, model_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = ["Settings", "load_pepper"]

PEPPER_FILE_NAME = "secret.key"
_MIN_PEPPER_LENGTH = 16

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


class Settings(BaseSettings):
    """Everything an operator can tune. Build one with `Settings()`; pass overrides as kwargs."""

    model_config = SettingsConfigDict(
        env_prefix="ZIMSEND_", extra="ignore", validate_default=True, frozen=True
    )

    data_dir: Path = Field(Path(".zimsend"), description="Local state: SQLite file, pepper file.")
    database_url: SecretStr | None = Field(
        None,
        description="SQLAlchemy URL; default `sqlite:///<data_dir>/zimsend.db`. "
        "`postgresql://user:pw@host/db` is accepted and uses psycopg 3.",
    )
    secret_pepper: SecretStr | None = Field(
        None, description="HMAC pepper; generated into `<data_dir>/secret.key` when unset."
    )

    grpc_host: str = "127.0.0.1"
    grpc_port: int = Field(50051, ge=0, le=65535)

    device_link_address: str = Field(
        "",
        description="host:port phones connect to, written into pairing URIs (the gateway's phone "
        "listener in production); empty means this server's own gRPC address.",
    )
    device_link_tls: bool = Field(
        False,
        description="Phones connect to `device_link_address` with TLS: pairing URIs carry tls=1.",
    )
    heartbeat_interval_seconds: float = Field(20.0, gt=0)
    missed_heartbeats_before_offline: PositiveInt = 3
    device_connects_pending_max: PositiveInt | None = Field(
        None,
        description="Phones that may be connecting at once (from opening the stream until "
        "Welcome); more are refused with UNAVAILABLE SERVER_BUSY and a retry delay. Unset: "
        "3 s worth of the measured welcome rate, at least 100.",
    )
    device_hello_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="A phone's stream that has not sent its DeviceHello this long after being "
        "admitted is closed (DEADLINE_EXCEEDED): a silent stream holds a connect slot.",
    )
    default_send_interval_ms: int = Field(2500, ge=0)
    default_parts_per_minute: int = Field(
        20,
        ge=0,
        description="Send budget of each SIM of a phone, in SMS parts per 60 s, "
        "unless the device sets its own (0: no limit); under Android's 30-a-minute prompt.",
    )
    default_parts_per_hour: int = Field(0, ge=0, description="The same per hour (0: none).")
    default_parts_per_day: int = Field(0, ge=0, description="The same per 24 h (0: none).")
    max_send_attempts: int = Field(
        3,
        ge=1,
        le=10,
        description="Dispatch attempts of one message when phones fail it "
        "before it left them (each failure re-queues it); a client may set its own.",
    )
    failover_cooldown_seconds: float = Field(
        60.0,
        ge=0,
        description="A phone that failed a message before sending it (no service, "
        "no SIM...) is given nothing for this long.",
    )
    send_limit_cooldown_seconds: float = Field(
        900.0,
        ge=0,
        description="A phone whose send limit (Android's or the carrier's) "
        "refused a message is given nothing for this long.",
    )
    delivery_report_timeout_hours: float = Field(
        24.0,
        gt=0,
        description="A `sent` message without a delivery report this long is "
        "flagged `delivery_report_missing` (and `sms.delivery_report_missing` is sent).",
    )
    message_ttl_hours: float = Field(24.0, gt=0)
    queue_max_wait_seconds: float = Field(
        300.0,
        gt=0,
        description="Backpressure: an immediate send is refused (429 RATE_LIMIT_EXCEEDED with "
        "Retry-After) while a message of the same client at the same or a higher priority has "
        "been due for longer than this without a phone taking it.",
    )
    retention_days: PositiveInt = 90

    webhook_retry_schedule_seconds: list[float] = Field(
        default_factory=lambda: [0.0, 60.0, 300.0],
        min_length=1,
        description="Delay before each attempt: the first from the event, each next one from "
        "the end of the previous attempt (JSON list in the environment).",
    )
    webhook_timeout_seconds: float = Field(5.0, gt=0)
    webhooks_allow_insecure: bool = Field(
        False, description="Development only: allow http:// and private/loopback receivers."
    )

    rate_limit_per_minute: PositiveInt = 100
    log_level: LogLevel = "INFO"

    metrics_host: str = Field(
        "127.0.0.1",
        description="Address the Prometheus endpoints listen on (server and "
        "worker); loopback by default: the numbers are for the operator, not the internet.",
    )
    metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="The server's Prometheus endpoint (`/metrics`); 0: off. Each server "
        "process needs a port of its own (docs/operations.md).",
    )
    worker_metrics_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="The worker's Prometheus endpoint; 0: off.",
    )

    @model_validator(mode="after")
    def _default_database_url(self) -> Settings:
        if self.database_url is None:
            url = f"sqlite:///{(self.data_dir / 'zimsend.db').as_posix()}"
            object.__setattr__(self, "database_url", SecretStr(url))
        return self

    @model_validator(mode="after")
    def _check_pepper(self) -> Settings:
        pepper = self.secret_pepper
        if pepper is not None and len(pepper.get_secret_value()) < _MIN_PEPPER_LENGTH:
            raise ValueError(
                f"ZIMSEND_SECRET_PEPPER must be at least {_MIN_PEPPER_LENGTH} characters; "
                "generate one with `python -c 'import secrets; print(secrets.token_hex(32))'`"
            )
        return self

    @property
    def database_url_value(self) -> str:
        """The database URL in clear, for the engine (never log it)."""
        assert self.database_url is not None  # filled by the validator
        return self.database_url.get_secret_value()

    @property
    def offline_after_seconds(self) -> float:
        """How long without a heartbeat before a device counts as offline."""
        return self.heartbeat_interval_seconds * self.missed_heartbeats_before_offline

    def pepper(self) -> bytes:
        """The pepper as bytes: `secret_pepper` when set, else the generated `secret.key`."""
        if self.secret_pepper is not None:
            return self.secret_pepper.get_secret_value().encode()
        return load_pepper(self.data_dir)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get("ZIMSEND_CONFIG")
        if not config_file:
            return (init_settings, env_settings)
        path = Path(config_file)
        if not path.is_file():
            raise FileNotFoundError(f"ZIMSEND_CONFIG points to {path}, which is not a file")
        file_source: PydanticBaseSettingsSource
        if path.suffix == ".toml":
            file_source = _TomlFileSource(settings_cls, path)
        else:
            file_source = DotEnvSettingsSource(settings_cls, env_file=path)
        return (init_settings, env_settings, file_source)


class _TomlFileSource(PydanticBaseSettingsSource):
    """Top-level keys of a TOML file, by field name; unknown keys are an error (typos)."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path) -> None:
        super().__init__(settings_cls)
        with path.open("rb") as f:
            self._data: dict[str, Any] = tomllib.load(f)
        unknown = set(self._data) - set(settings_cls.model_fields)
        if unknown:
            raise ValueError(f"unknown settings in {path}: {', '.join(sorted(unknown))}")

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


def load_pepper(data_dir: Path) -> bytes:
    """Read `<data_dir>/secret.key`, creating it (mode 600) on first use.

    Creation is atomic and race-free: the pepper is written to a private temporary file that is
    then hard-linked into place, which fails if another process (the worker starting at the same
    time as the server) won the race; the loser reads the winner's pepper.
    """
    path = data_dir / PEPPER_FILE_NAME
    try:
        return _read_pepper(path)
    except FileNotFoundError:
        pass
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # holds the database too
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".secret-", suffix=".tmp")  # mode 600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return _read_pepper(path)


def _read_pepper(path: Path) -> bytes:
    value = path.read_text().strip()
    if len(value) < _MIN_PEPPER_LENGTH:
        raise ValueError(f"{path} holds no usable pepper; restore it from backup")
    return value.encode()
