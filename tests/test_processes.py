"""The one way ZimSend starts a program (`zimsend.gateway.processes`, issue 13): a child in a
group of its own that `terminate` always takes down whole, even when it ignores the polite
signal; and no other module starts a program by itself."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

from _devices import wait_for

from zimsend.gateway.processes import spawn, terminate

ROOT = Path(__file__).resolve().parent.parent
#: A shell that ignores SIGTERM (its background `sleep` inherits that) and prints the pid of
#: that grandchild, which is in its group.
STUBBORN = 'trap "" TERM; sleep 300 & echo $!; wait'
POLITE = 'trap "exit 7" TERM; sleep 300 & echo $!; wait'


def _gone(pid: int) -> bool:
    """No such process, or a zombie waiting for its new parent to reap it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _start(script: str) -> tuple[subprocess.Popen[bytes], int]:
    proc = spawn(["sh", "-c", script], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    with proc.stdout:
        grandchild = int(proc.stdout.readline())
    return proc, grandchild


def test_terminate_kills_a_group_that_ignores_sigterm_after_the_timeout() -> None:
    proc, grandchild = _start(STUBBORN)
    assert terminate(proc, timeout=0.5) == -signal.SIGKILL
    wait_for(lambda: _gone(grandchild), 10, "the grandchild killed with its group")


def test_a_child_that_stops_on_its_signal_keeps_its_exit_code_and_leaves_nothing() -> None:
    # The leader alone gets SIGTERM (as PostgreSQL's postmaster gets its SIGINT); what it
    # left running in its group is killed once it has exited.
    proc, grandchild = _start(POLITE)
    assert terminate(proc, timeout=30, whole_group=False) == 7
    wait_for(lambda: _gone(grandchild), 10, "the grandchild killed with its group")
    assert terminate(proc) == 7  # stopping twice is harmless


def test_no_other_module_starts_a_long_running_program_itself() -> None:
    allowed = ROOT / "gateway" / "zimsend" / "gateway" / "processes.py"
    popen = re.compile(r"\bPopen\(")
    offenders = [
        str(path.relative_to(ROOT))
        for tree in ("server", "gateway", "clients", "buildtools")
        for path in (ROOT / tree).rglob("*.py")
        if path != allowed and popen.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == [], "start programs with zimsend.gateway.processes.spawn"
