"""The phone side installs without the server: `zimsend-client` must stay small (DESIGN.md,
Layout — a phone in Termux should not need SQLModel)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# segno draws pairing QR codes (pure Python, no dependency of its own).
ALLOWED = {"zimsend-protos", "grpcio", "trio", "gsmcodecs", "regex",
           "googleapis-common-protos", "protobuf", "segno"}


def test_the_client_distribution_depends_on_nothing_of_the_server() -> None:
    project = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("=")[0].split("[")[0].split(";")[0].strip()
             for dep in project["dependencies"]}
    assert names <= ALLOWED, names - ALLOWED


def test_the_agent_and_the_fleet_import_no_server_library() -> None:
    code = (
        "import sys, zimsend.agent.agent, zimsend.agent.fleet, zimsend.agent.cli, "
        "zimsend.segments\n"
        "bad = [m for m in ('sqlmodel', 'sqlalchemy', 'pydantic', 'zimsend.server') "
        "if m in sys.modules]\n"
        "print(bad)"
    )
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "[]"


def test_the_fleet_never_imports_trio() -> None:
    # One process, one model: the asyncio fleet shares only framework-free modules.
    code = "import sys, zimsend.agent.fleet\nprint('trio' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "False"
