"""Starting and stopping a long-running program: the one way ZimSend does it, for Envoy
(`start_envoy`), PostgreSQL (`zimsend up --postgres`, the tests), `zimsend up`'s children,
`zimsend bench` and the test suite (`zimsend.server.processes` builds on these).

`spawn` starts the child in a session of its own (one signal reaches the process group it may
create, and a terminal's Ctrl-C reaches only its parent) with stdin closed; `signal_group`
signals that group, tolerating one already gone; `terminate` stops it: a signal, a wait, then
SIGKILL to the whole group, so no child outlives its owner.

It lives in the gateway distribution because that is the lowest one that starts a program:
the server depends on it, never the reverse, and the phone's `zimsend-client` starts none.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["free_port", "signal_group", "spawn", "terminate"]

#: How long a SIGKILLed group may take to be reaped before `terminate` gives up on it.
KILL_WAIT_SECONDS = 10.0


def spawn(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    stdout: IO[bytes] | int | None = None,
    stderr: IO[bytes] | int | None = None,
    cwd: Path | None = None,
    preexec_fn: Callable[[], object] | None = None,
    user: int | None = None,
    group: int | None = None,
    extra_groups: Sequence[int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` in a session of its own with stdin closed; `None` output is inherited.
    `user`/`group`/`extra_groups` and `preexec_fn` are Popen's (PostgreSQL runs as its own
    user when we are root and dies with its parent)."""
    return subprocess.Popen(
        [str(arg) for arg in argv],
        env=dict(env) if env is not None else None,
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=cwd,
        preexec_fn=preexec_fn,
        user=user,
        group=group,
        extra_groups=extra_groups,
    )


def signal_group(pid: int, sig: int) -> None:
    """Signal the process group `spawn` made for `pid`; one already gone is not an error."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def terminate(
    proc: subprocess.Popen[bytes],
    timeout: float = 10.0,
    *,
    sig: int = signal.SIGTERM,
    whole_group: bool = True,
) -> int | None:
    """Stop a child `spawn` started and return its exit code: `sig` to its group (or, with
    `whole_group=False`, to the child alone: a program such as PostgreSQL's postmaster stops
    its own children in order), up to `timeout` seconds for it to exit, then SIGKILL. The
    group gets SIGKILL at the end in any case: nothing it started outlives it."""
    if proc.poll() is None:
        if whole_group:
            signal_group(proc.pid, sig)
        else:
            proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            signal_group(proc.pid, signal.SIGKILL)
            proc.wait(KILL_WAIT_SECONDS)
    signal_group(proc.pid, signal.SIGKILL)
    return proc.returncode


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS's choice; it may be taken before it is bound)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
