"""The gate fails on a lint or a type error, so a green `run.py lint` means something.

`python3 buildtools/run.py lint` (and so `run.py test` and `.ci/run`) passes only when ruff
(lint and format), mypy and the codegen check find nothing (zimsend.buildtools.lint). These
tests run the gate's own checks, with the project's pyproject.toml, on a scratch folder holding
one small module with a deliberate error, and expect each check to fail and say where.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from zimsend.buildtools import lint

pytestmark = pytest.mark.slow

CLEAN = '''"""A module with nothing to report."""


def double(value: int) -> int:
    return value * 2
'''


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A scratch folder with the project's configuration (ruff's and mypy's)."""
    shutil.copyfile(lint.ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_clean_module_passes_both_checks(project: Path) -> None:
    (project / "probe.py").write_text(CLEAN)
    assert lint.ruff(project, ["probe.py"]).ok
    outcome = lint.mypy(project, ["probe.py"])
    assert outcome.ok, outcome.output


def test_lint_error_fails_ruff(project: Path) -> None:
    (project / "probe.py").write_text(CLEAN.replace("\n\n\n", "\nimport os\n\n\n", 1))
    outcome = lint.ruff(project, ["probe.py"])
    assert not outcome.ok
    assert "F401 [*] `os` imported but unused" in outcome.output
    assert "probe.py:2:8" in outcome.output


def test_unformatted_code_fails_the_format_check(project: Path) -> None:
    (project / "probe.py").write_text(CLEAN.replace("value * 2", "value*2"))
    outcome = lint.ruff_format(project, ["probe.py"])
    assert not outcome.ok
    assert "probe.py:5" in outcome.output
    assert "1 file would be reformatted" in outcome.output
    (project / "probe.py").write_text(CLEAN)
    assert lint.ruff_format(project, ["probe.py"]).ok


def test_type_error_fails_mypy(project: Path) -> None:
    (project / "probe.py").write_text(CLEAN + '\n\nWRONG: int = double("two")\n')
    outcome = lint.mypy(project, ["probe.py"])
    assert not outcome.ok
    assert 'probe.py:8: error: Argument 1 to "double" has incompatible type "str"' in (
        outcome.output
    )


def test_untyped_function_fails_mypy(project: Path) -> None:
    """`disallow_untyped_defs`: every function says its types."""
    (project / "probe.py").write_text(CLEAN + "\n\ndef untyped(value):\n    return value\n")
    outcome = lint.mypy(project, ["probe.py"])
    assert not outcome.ok
    assert "[no-untyped-def]" in outcome.output


def test_gate_fails_when_any_check_fails(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`main` (what `run.py lint` runs) exits 1 and prints the finding."""
    failed = lint.Outcome("mypy", ok=False, output="probe.py:1: error: boom", seconds=0.0)
    passed = lint.Outcome("ruff", ok=True, output="", seconds=0.0)
    monkeypatch.setattr(lint, "gate", lambda root=lint.ROOT: [passed, failed])
    assert lint.main([]) == 1
    assert "probe.py:1: error: boom" in capsys.readouterr().out
    monkeypatch.setattr(lint, "gate", lambda root=lint.ROOT: [passed])
    assert lint.main([]) == 0
