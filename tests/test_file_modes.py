"""A fresh data directory is private (issue 12, item 11): the folder 700, the SQLite database,
its WAL and shared-memory files and the pepper 600, whichever process creates them first
(`zimsend serve`, `zimsend worker`, `zimsend admin`; `zimsend up` in test_up.py)."""

from __future__ import annotations

import stat
from pathlib import Path

from _processes import run_zimsend, start_server, zimsend_env


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_zimsend_serve_creates_a_private_data_dir(tmp_path: Path) -> None:
    data_dir = tmp_path / "new" / "data"
    env = zimsend_env(data_dir, "unused")
    del env["ZIMSEND_SECRET_PEPPER"]  # generated into the data dir
    program, _ = start_server(data_dir, env, tmp_path / "logs")
    with program:
        assert _mode(data_dir) == 0o700
        for name in ("zimsend.db", "zimsend.db-wal", "zimsend.db-shm", "secret.key"):
            assert _mode(data_dir / name) == 0o600, name


def test_zimsend_admin_creates_a_private_database(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    run_zimsend(["admin", "migrate"], zimsend_env(data_dir, "test-pepper-not-secret-0123456789"))
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "zimsend.db") == 0o600
