"""Delivery reports survive an agent restart (issue 11, item 5 acceptance).

A phone that stops between sending an SMS and its delivery report must still report
`delivered` once it is back: no message stays `sent` because the agent restarted. Real
processes throughout: `zimsend serve` behind the real Envoy, messages sent over REST, and the
real agent (`zimsend device run --backend simulator`) connected through Envoy's phone port.
The agent is stopped while every message is `sent` and no delivery report is due yet — by
kill -9 (nothing runs on the way out) and by SIGTERM (a clean stop) — then started again on
the same journal and outbox. The journal keeps the parts awaiting a report; the simulator
re-schedules them on start (one full delivery delay after the restart). Against the agent of
a1d994a (before the journal kept them) the kill -9 case times out with every message `sent`.
"""

from __future__ import annotations

import collections
import signal
import time
from pathlib import Path

import httpx
import pytest
from _devices import ServerDb, outbox_lines, start_agent, wait_for
from _processes import Program
from conftest import Stack

pytestmark = pytest.mark.slow

# The simulator draws each report's delay from 0.75 to 1.25 times its --delivery-delay. Before
# the stop the network takes 60 s (the first report is due 45 s after its send: time enough,
# even on a loaded machine, to see every message `sent` and stop the agent); after the restart
# it answers within about a second, so the test does not wait a minute.
DELIVERY_DELAY_BEFORE_S = 60.0
DELIVERY_DELAY_AFTER_S = 1.0
MESSAGES = [
    "Votre code de retrait: 4411",
    "Rendez-vous demain 9h",
    "Colis expédié",
    "Paiement reçu, merci",
    "long " * 60,
]  # the last one is two parts (GSM-7, 300 chars)


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Fast presence (1 s heartbeats) and no pacing, so the sends all leave at once."""
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("restart-data"),
        TEST_PEPPER,
        ZIMSEND_HEARTBEAT_INTERVAL_SECONDS="1",
        ZIMSEND_DEFAULT_SEND_INTERVAL_MS="0",
    )


def _status(stack: Stack, message_id: str) -> str:
    reply = httpx.get(f"{stack.base_url}/v1/sms/status/{message_id}", headers=stack.auth)
    assert reply.status_code == 200, reply.text
    return str(reply.json()["status"])


def _statuses(stack: Stack, ids: list[str]) -> dict[str, str]:
    return {message_id: _status(stack, message_id) for message_id in ids}


def _online(stack: Stack, device_id: str) -> bool:
    reply = httpx.get(f"{stack.base_url}/v1/devices/{device_id}", headers=stack.auth)
    return bool(reply.json()["status"] == "online")


@pytest.mark.parametrize("stop_signal", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_messages_sent_before_a_restart_still_end_delivered(
    stack: Stack,
    zimsend_env: dict[str, str],
    tmp_path: Path,
    stop_signal: signal.Signals,
) -> None:
    created = httpx.post(
        f"{stack.base_url}/v1/devices",
        headers=stack.auth,
        json={"name": f"restart {stop_signal.name}"},
    ).json()
    device_id, password = created["device_id"], created["device_password"]

    def start(name: str, delivery_delay: float) -> Program:
        """The same journal and outbox (under tmp_path) every time, as on a real phone."""
        return start_agent(
            zimsend_env,
            stack.envoy.device_target,
            stack.client_id,
            device_id,
            password,
            tmp_path,
            "--send-delay",
            "0.05",
            "--delivery-delay",
            str(delivery_delay),
            "--log-level",
            "INFO",
            name=name,
        )

    with start("before", DELIVERY_DELAY_BEFORE_S) as before:
        wait_for(lambda: _online(stack, device_id), 30, "the phone online")
        ids = []
        for n, text in enumerate(MESSAGES):
            reply = httpx.post(
                f"{stack.base_url}/v1/sms/send",
                headers=stack.auth,
                json={"to": f"+3361234567{n}", "message": text},
            )
            assert reply.status_code == 200, reply.text
            ids.append(reply.json()["message_id"])
        wait_for(lambda: set(_statuses(stack, ids).values()) == {"sent"}, 10, "all sent", step=0.02)
        first_sent = min(line["sent_at"] for line in outbox_lines(tmp_path / "outbox.jsonl"))
        before.kill(stop_signal)
        stopped = before.proc.wait(15)
    elapsed = time.time() - _epoch(first_sent)
    if stop_signal == signal.SIGTERM:
        assert stopped == 0, "a clean stop exits 0"
    # The premise: every report is still owed when the agent stops.
    assert set(_statuses(stack, ids).values()) == {"sent"}, (
        f"a report arrived before the restart (stopped {elapsed:.1f} s after the first send)"
    )

    with start("after", DELIVERY_DELAY_AFTER_S):
        wait_for(
            lambda: set(_statuses(stack, ids).values()) == {"delivered"},
            DELIVERY_DELAY_AFTER_S + 30,
            "every message delivered after the restart",
        )

    sends = collections.Counter(
        line["message_id"] for line in outbox_lines(tmp_path / "outbox.jsonl")
    )
    assert sends == {message_id: 1 for message_id in ids}, "each SMS left the phone once"
    events = ServerDb(Path(zimsend_env["ZIMSEND_DATA_DIR"])).events(stack.client_id, "sms.")
    per_message = collections.Counter(
        (payload["message_id"], kind) for kind, payload in events if payload["message_id"] in ids
    )
    assert per_message == {(m, kind): 1 for m in ids for kind in ("sms.sent", "sms.delivered")}


def _epoch(iso: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(iso).timestamp()
