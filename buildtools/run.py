#!/usr/bin/env python3
"""The two commands of the README, on a machine that has only Python 3.11+.

    python3 buildtools/run.py up      # start ZimSend (embedded SQLite, everything started)
    python3 buildtools/run.py test    # run the whole test suite

Why a stdlib-only script: a fresh machine has no uv, no virtualenv and no generated code.
This script makes `.venv` (installing uv into it from PyPI), syncs the uv workspace from
`uv.lock`, regenerates the code from the protos, and then runs the real command inside the
environment. Every step is idempotent, so running it twice costs only the sync check.

Other verbs: `lint` (ruff, mypy and the generated files' freshness: the gate `test` runs first,
zimsend.buildtools.lint), `codegen` (regenerate only), `sync` (environment only), and anything
else is passed to the `zimsend` command (`python3 buildtools/run.py admin create-client --name
acme`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")


def _run(*cmd: str | os.PathLike[str], **kw: Any) -> None:
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT, **kw)


def ensure_environment() -> None:
    """Create `.venv` with uv inside it and sync the workspace (dev tools included)."""
    if sys.version_info < (3, 11):  # noqa: UP036 - run.py starts under any python3
        sys.exit("ZimSend needs Python 3.11 or newer")
    uv = BIN / "uv"
    if not uv.exists():
        print("run.py: creating .venv and installing uv", flush=True)
        venv.EnvBuilder(with_pip=True, clear=False).create(VENV)
        _run(BIN / "python", "-m", "pip", "install", "--quiet", "uv>=0.5")
    env = dict(os.environ, UV_PROJECT_ENVIRONMENT=str(VENV), VIRTUAL_ENV=str(VENV))
    # --inexact keeps uv itself (installed by pip above) in the environment.
    reinstall = [arg for name in _unexposed_members() for arg in ("--reinstall-package", name)]
    # --compile-bytecode: every ZimSend process (and the test suite starts hundreds) would
    # otherwise compile grpc, SQLAlchemy, pydantic … from source at each start wherever
    # PYTHONDONTWRITEBYTECODE is set (it is on our CI machines): `zimsend admin --help` took
    # 3.3 s of CPU instead of 1.4 s. Already compiled files are skipped.
    _run(
        uv,
        "sync",
        "--all-packages",
        "--inexact",
        "--quiet",
        "--compile-bytecode",
        "--python",
        BIN / "python",
        *reinstall,
        env=env,
    )


def compile_sources() -> None:
    """Bytecode for the workspace's own code (editable installs, which uv leaves alone);
    up-to-date files are skipped."""
    members = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    folders = [
        str(ROOT / member / "zimsend")
        for member in members["members"]
        if (ROOT / member / "zimsend").is_dir()
    ]
    _run(BIN / "python", "-m", "compileall", "-q", "-j", "0", *folders, stdout=subprocess.DEVNULL)


def _unexposed_members() -> list[str]:
    """Workspace members with Python code that the environment's editable installs miss.

    Hatchling's editable install only puts a member's folder on sys.path if it held .py files
    when it was built, and uv rebuilds only when pyproject.toml changes; so a member whose
    first module appeared after the last sync would stay unimportable.
    """
    pth = [*VENV.glob("lib/python3*/site-packages/*.pth"), *VENV.glob("Lib/site-packages/*.pth")]
    if not pth:
        return []  # new environment: the sync builds everything anyway
    on_path = {line.strip() for f in pth for line in f.read_text().splitlines()}
    members = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["workspace"]
    missing = []
    for member in members["members"]:
        folder = ROOT / member
        if str(folder) not in on_path and any((folder / "zimsend").rglob("*.py")):
            project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
            missing.append(project["name"])
    return missing


#: How the whole suite runs when no pytest arguments are given (docs/decisions.md).
PARALLEL = ("-n", "4", "--dist", "loadfile")

#: What the test suite needs from Debian: (how to tell it is there, package, what for).
TEST_SYSTEM_PACKAGES = (
    ("chromium", "chromium", "the web console's browser tests (Playwright cannot download one)"),
    ("/usr/lib/postgresql/15/bin/initdb", "postgresql-15", "the PostgreSQL the tests start"),
    ("node", "nodejs", "the webhook receiver (the FAQ's Node.js verification snippet)"),
)


def ensure_test_packages() -> None:
    """Install with apt-get what the tests need from Debian and is missing (CI runs as root on
    a clean machine); elsewhere say what is missing, and the tests that need it fail."""
    missing = [
        (package, why)
        for probe, package, why in TEST_SYSTEM_PACKAGES
        if not (Path(probe).exists() if probe.startswith("/") else shutil.which(probe))
    ]
    if not missing:
        return
    names = [package for package, _ in missing]
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        for package, why in missing:
            print(
                f"run.py: Debian package {package} is missing ({why}); install it as root"
                " (apt-get install), or those tests fail.",
                flush=True,
            )
        return
    print(f"run.py: installing {', '.join(names)} for the tests", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    _run("apt-get", "update", "-q", env=env, stdout=subprocess.DEVNULL)
    _run("apt-get", "install", "-y", "-q", *names, env=env, stdout=subprocess.DEVNULL)


def codegen() -> None:
    _run(BIN / "python", "-m", "zimsend.buildtools.codegen")


def lint() -> int:
    """The gate (zimsend.buildtools.lint); its exit status, non-zero on any finding."""
    return subprocess.run(
        [str(BIN / "python"), "-m", "zimsend.buildtools.lint"], cwd=ROOT, check=False
    ).returncode


def main(argv: list[str]) -> int:
    verb, rest = (argv[0], argv[1:]) if argv else ("up", [])
    ensure_environment()
    if verb == "sync":
        return 0
    # Before codegen, which would make stale generated files fresh and hide that they were
    # committed stale; `test` fails on any finding without starting the suite.
    if verb in ("lint", "test") and (status := lint()) != 0:
        print("run.py: lint failed (CONTRIBUTING.md says how to run and fix it)", flush=True)
        return status
    if verb == "lint":
        return 0
    codegen()
    if verb == "codegen":
        return 0
    compile_sources()
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if verb == "test":
        ensure_test_packages()
        # The whole suite mostly waits (processes starting, phones, timers): four xdist
        # workers, one test file each at a time (module fixtures stay in one worker).
        cmd = [str(BIN / "python"), "-m", "pytest", *(rest or PARALLEL)]
    else:
        cmd = [str(BIN / "zimsend"), verb, *rest]
    try:
        return subprocess.run(cmd, cwd=ROOT, env=env).returncode
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
