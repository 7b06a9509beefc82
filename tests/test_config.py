"""Settings: defaults, environment, config files, secrets that never print, the pepper file."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from zimsend.server.config import Settings, load_pepper


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("ZIMSEND_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def test_defaults_match_the_spec(clean_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert s.data_dir == Path(".zimsend")
    assert s.database_url_value == "sqlite:///.zimsend/zimsend.db"
    assert s.heartbeat_interval_seconds == 20
    assert s.missed_heartbeats_before_offline == 3
    assert s.offline_after_seconds == 60
    assert s.default_send_interval_ms == 2500
    assert s.message_ttl_hours == 24
    assert s.webhook_retry_schedule_seconds == [0, 60, 300]
    assert s.webhooks_allow_insecure is False
    assert s.rate_limit_per_minute == 100


def test_environment_overrides(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ZIMSEND_DATA_DIR", str(tmp_path / "d"))
    clean_env.setenv("ZIMSEND_WEBHOOK_RETRY_SCHEDULE_SECONDS", "[0, 5]")
    clean_env.setenv("ZIMSEND_WEBHOOKS_ALLOW_INSECURE", "true")
    clean_env.setenv("ZIMSEND_GRPC_PORT", "6000")
    s = Settings()
    assert s.database_url_value == f"sqlite:///{tmp_path}/d/zimsend.db"
    assert s.webhook_retry_schedule_seconds == [0, 5]
    assert s.webhooks_allow_insecure is True
    assert s.grpc_port == 6000


def test_secrets_never_print(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ZIMSEND_DATABASE_URL", "postgresql://u:hunter2-password@db/zimsend")
    clean_env.setenv("ZIMSEND_SECRET_PEPPER", "very-secret-pepper-value")
    s = Settings()
    shown = repr(s) + str(s) + s.model_dump_json()
    assert "hunter2" not in shown
    assert "very-secret" not in shown
    assert s.pepper() == b"very-secret-pepper-value"


def test_a_short_pepper_is_refused(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="at least"):
        Settings(secret_pepper="short")


def test_toml_config_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "zimsend.toml"
    path.write_text('grpc_port = 7000\nlog_level = "DEBUG"\nrate_limit_per_minute = 10\n')
    clean_env.setenv("ZIMSEND_CONFIG", str(path))
    clean_env.setenv("ZIMSEND_RATE_LIMIT_PER_MINUTE", "20")  # environment wins over the file
    s = Settings()
    assert (s.grpc_port, s.log_level, s.rate_limit_per_minute) == (7000, "DEBUG", 20)


def test_toml_config_file_with_a_typo_is_an_error(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = tmp_path / "zimsend.toml"
    path.write_text("grpc_prot = 7000\n")
    clean_env.setenv("ZIMSEND_CONFIG", str(path))
    with pytest.raises(ValueError, match="grpc_prot"):
        Settings()


def test_dotenv_config_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "zimsend.env"
    path.write_text("ZIMSEND_GRPC_PORT=7001\nZIMSEND_SECRET_PEPPER=pepper-from-dotenv-file\n")
    clean_env.setenv("ZIMSEND_CONFIG", str(path))
    s = Settings()
    assert s.grpc_port == 7001
    assert s.pepper() == b"pepper-from-dotenv-file"


def test_missing_config_file_is_an_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ZIMSEND_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(FileNotFoundError):
        Settings()


def test_pepper_is_generated_once_private_and_stable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    s = Settings(data_dir=tmp_path / "state")
    first = s.pepper()
    key_file = tmp_path / "state" / "secret.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(first) == 64
    assert Settings(data_dir=tmp_path / "state").pepper() == first
    assert [p.name for p in (tmp_path / "state").iterdir()] == ["secret.key"]  # no temp left


def test_processes_racing_to_create_the_pepper_agree(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        peppers = set(pool.map(lambda _: load_pepper(tmp_path), range(32)))
    assert len(peppers) == 1
