"""A second `zimsend serve` on a port already served fails at once with one clear line,
instead of sharing the port (grpc's Linux default, SO_REUSEPORT): two servers on one SQLite
file would each drive only their own phones (docs/decisions.md)."""

from __future__ import annotations

import subprocess

import grpc
from _processes import ZIMSEND
from conftest import RunningServer


def test_a_second_server_on_a_served_port_fails_naming_the_address(
    server: RunningServer,
    zimsend_env: dict[str, str],
) -> None:
    _, address = server
    port = address.rsplit(":", 1)[1]
    done = subprocess.run(
        [ZIMSEND, "serve", "--port", port],
        env=zimsend_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert f"zimsend serve: cannot listen on 127.0.0.1:{port}: the port is in use" in done.stderr
    assert "Traceback" not in done.stderr
    # The first server still answers.
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
