"""The gate every change passes: ruff (lint and format), mypy and fresh generated code.

    python -m zimsend.buildtools.lint      # what `python3 buildtools/run.py lint` runs
    python3 buildtools/run.py test         # runs this first, then the tests

Why one module: `run.py` (the README's commands), `.ci/run` (through `run.py test`) and
`.pre-commit-config.yaml` must apply the same checks with the same configuration, the root
pyproject.toml's `[tool.ruff]` and `[tool.mypy]`. Each check is a function taking the folder
whose configuration applies, so tests/test_lint_gate.py can run them on a scratch copy holding
a deliberate error and see the gate fail.

Each check runs in a child process (the tools' own command lines, as a developer would type
them) and reports what it printed; the gate fails when any check fails. mypy keeps its cache in
`.mypy_cache` (git ignores it), so a run after a small change takes seconds, not minutes.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


@dataclass(frozen=True)
class Outcome:
    """What one check found: `ok` is its verdict, `output` what the tool printed."""

    name: str
    ok: bool
    output: str
    seconds: float


def _run(name: str, cmd: Sequence[str], root: Path) -> Outcome:
    started = time.monotonic()
    done = subprocess.run(list(cmd), cwd=root, capture_output=True, text=True, check=False)
    output = (done.stdout + done.stderr).strip()
    return Outcome(name, done.returncode == 0, output, time.monotonic() - started)


def ruff(root: Path = ROOT, paths: Sequence[str] = (".",)) -> Outcome:
    """ruff's linter with `root`'s configuration."""
    return _run("ruff", [sys.executable, "-m", "ruff", "check", "--no-fix", *paths], root)


def ruff_format(root: Path = ROOT, paths: Sequence[str] = (".",)) -> Outcome:
    """The code is as `ruff format` writes it (`ruff format` fixes what this finds)."""
    return _run("ruff format", [sys.executable, "-m", "ruff", "format", "--check", *paths], root)


def mypy(root: Path = ROOT, paths: Sequence[str] = ()) -> Outcome:
    """mypy with `root`'s configuration; without `paths`, the `files` it lists."""
    return _run("mypy", [sys.executable, "-m", "mypy", *paths], root)


def codegen_fresh(root: Path = ROOT) -> Outcome:
    """The files generated from the protos are what codegen would write now."""
    cmd = [sys.executable, "-m", "zimsend.buildtools.codegen", "--check"]
    return _run("codegen --check", cmd, root)


def gate(root: Path = ROOT) -> list[Outcome]:
    """Every check, in order of speed (the fastest failure is shown first)."""
    return [ruff(root), ruff_format(root), mypy(root), codegen_fresh(root)]


def main(argv: Sequence[str] | None = None) -> int:
    del argv  # no options: the configuration lives in pyproject.toml
    outcomes = gate()
    for outcome in outcomes:
        verdict = "ok" if outcome.ok else "FAILED"
        print(f"lint: {outcome.name} {verdict} ({outcome.seconds:.1f}s)", flush=True)
        if not outcome.ok:
            print(outcome.output, flush=True)
    return 0 if all(outcome.ok for outcome in outcomes) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
