"""The termux backend: an Android phone running the agent, through Termux:API's commands.

The commands are stand-ins (tests/_termux_api.py) that behave as Termux:API documents: its
JSON shapes, exit codes, permission errors, a slot without a SIM that silently sends
nothing. The sender, the journal and the recorder are the real ones; the last test runs the
real `zimsend device run --backend termux` against a real server behind Envoy.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import trio
from _processes import ZIMSEND, Program
from _termux_api import TermuxApiStandIn
from conftest import Stack

from zimsend.agent.agent import JournalRecorder
from zimsend.agent.health import give_back_code
from zimsend.agent.journal import Journal
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import SendRequest
from zimsend.agent.senders.termux import TermuxSender, TermuxTimeouts

T = TypeVar("T")


@pytest.fixture
def phone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> TermuxApiStandIn:
    """Termux:API stand-ins first on PATH (the agent runs them in-process here)."""
    standin = TermuxApiStandIn(tmp_path / "phone").install()
    monkeypatch.setenv("PATH", standin.path_env())
    return standin


def request(body: str, *, parts: int = 1, sim_slot: int | None = None) -> SendRequest:
    return SendRequest(
        message_id="msg_1",
        to="+263771234567",
        body=body,
        parts=tuple(body for _ in range(parts)),
        sim_slot=sim_slot,
    )


def inbound_bodies(journal: Journal) -> list[str]:
    return [f.inbound.body for _, f in journal.unacked_reports() if f.HasField("inbound")]


def poll_once(journal: Journal, sender: TermuxSender) -> None:
    """One pass of `run()`: the mark from the journal, then one poll of the inbox."""
    recorder = JournalRecorder(journal, Reporter(journal))

    async def main() -> None:
        mark = recorder.latest_inbound("termux:")
        await sender.poll_inbox(recorder, None if mark is None else int(mark.split(":")[1]))

    trio.run(main)


# --- sending ------------------------------------------------------------------------------------


def test_a_send_hands_recipient_slot_and_exact_text_to_termux_sms_send(
    phone: TermuxApiStandIn,
) -> None:
    """The text goes on stdin: as arguments the script would `echo` it (backslashes
    rewritten by dash) and a text starting with `-h` would print the usage and send nothing."""
    text = "-h is not an option \\n here: Mhoro! " + "ü" * 70  # UCS-2, two parts
    result = trio.run(TermuxSender(sim_slot=0).send, request(text, parts=2))
    assert result.ok
    assert len(result.parts) == 2
    assert phone.sent() == [{"recipients": ["+263771234567"], "slot": 0, "text": text}]
    assert text not in str(phone.calls("termux-sms-send"))  # never in argv (ps shows argv)


def test_a_per_message_sim_slot_wins_over_the_default(phone: TermuxApiStandIn) -> None:
    phone.update(active_slots=[0, 1])
    trio.run(TermuxSender(sim_slot=0).send, request("hi", sim_slot=1))
    trio.run(TermuxSender().send, request("hello"))
    assert [(s["slot"], s["text"]) for s in phone.sent()] == [(1, "hi"), (None, "hello")]


def test_a_failing_send_fails_every_part_with_a_spec_code_and_the_raw_error(
    phone: TermuxApiStandIn,
) -> None:
    phone.update(send_failure={"exit": 1, "stderr": "termux-api: connect(): No such file"})
    result = trio.run(TermuxSender().send, request("x", parts=2))
    assert [(p.ok, p.error_code) for p in result.parts] == [(False, "DEVICE_ERROR")] * 2
    assert "exited with 1: termux-api: connect(): No such file" in result.parts[0].error_message

    phone.update(send_failure=None, denied=["termux-sms-send"])
    refused = trio.run(TermuxSender().send, request("x")).parts[0]
    assert refused.error_code == "DEVICE_ERROR"
    assert "android.permission.SEND_SMS" in refused.error_message
    assert phone.sent() == []


def test_a_send_that_hangs_is_a_timeout(phone: TermuxApiStandIn) -> None:
    """Termux:API's command waits forever when the app does not answer."""
    phone.update(send_failure={"hang": True})
    sender = TermuxSender(timeouts=TermuxTimeouts(send=1.0, query=1.0))
    part = trio.run(sender.send, request("x")).parts[0]
    assert part.error_code == "TIMEOUT"
    assert "did not answer within 1s" in part.error_message


def test_a_recipient_list_is_refused_not_sent(phone: TermuxApiStandIn) -> None:
    part = trio.run(TermuxSender().send, SendRequest("m", "+2637,+2638", "x", ("x",))).parts[0]
    assert part.error_code == "INVALID_NUMBER"
    assert phone.sent() == []


# --- receiving ----------------------------------------------------------------------------------


def test_the_first_start_does_not_report_the_old_inbox(
    phone: TermuxApiStandIn,
    tmp_path: Path,
) -> None:
    for n in range(3):
        phone.receive("+263770000001", f"old {n}")
    journal = Journal.open(tmp_path / "j.sqlite3", "dev1")
    sender = TermuxSender()
    poll_once(journal, sender)
    assert inbound_bodies(journal) == []
    phone.receive("+263770000002", "new")
    poll_once(journal, sender)
    assert inbound_bodies(journal) == ["new"]


def test_an_empty_inbox_at_first_start_still_reports_what_arrives_while_down(
    phone: TermuxApiStandIn,
    tmp_path: Path,
) -> None:
    path = tmp_path / "j.sqlite3"
    journal = Journal.open(path, "dev1")
    poll_once(journal, TermuxSender())
    journal.close()
    phone.receive("+263770000001", "while down")
    journal = Journal.open(path, "dev1")
    poll_once(journal, TermuxSender())
    assert inbound_bodies(journal) == ["while down"]


def test_inbound_sms_are_reported_once_across_restarts_and_none_missed_while_down(
    phone: TermuxApiStandIn,
    tmp_path: Path,
) -> None:
    """The agent runs, stops, the phone receives more than a page (and sends, which takes
    ids from the same SMS table), the agent starts again: every SMS once, oldest first."""
    path = tmp_path / "j.sqlite3"
    phone.receive("+263770000009", "before the gateway")
    journal = Journal.open(path, "dev1")
    poll_once(journal, TermuxSender(page_size=4))  # baseline
    phone.receive("+263770000001", "one")
    phone.receive("+263770000001", "two")

    async def run_until(sender: TermuxSender, journal: Journal, count: int) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, JournalRecorder(journal, Reporter(journal)))
            with trio.fail_after(10):
                while len(inbound_bodies(journal)) < count:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.02)
            nursery.cancel_scope.cancel()

    trio.run(run_until, TermuxSender(page_size=4, poll_interval=0.05), journal, 2)
    journal.close()  # the agent stops

    trio.run(TermuxSender().send, request("a reply"))
    down = [f"down {n}" for n in range(11)]
    for body in down:
        phone.receive("+263770000002", body)
    journal = Journal.open(path, "dev1")
    trio.run(run_until, TermuxSender(page_size=4, poll_interval=0.05), journal, 13)
    time.sleep(0.1)
    poll_once(journal, TermuxSender(page_size=4))  # and once more: nothing new
    assert inbound_bodies(journal) == ["one", "two", *down]
    reports = [f.inbound for _, f in journal.unacked_reports() if f.HasField("inbound")]
    assert getattr(reports[0], "from") == "+263770000001"
    assert reports[0].received_at.seconds > 1_600_000_000


# --- health -------------------------------------------------------------------------------------


def test_health_reads_battery_network_and_signal(phone: TermuxApiStandIn) -> None:
    sender = TermuxSender()
    health = trio.run(sender.health)
    assert (health.battery, health.charging, health.signal) == (87, True, 3)
    assert (health.network, health.can_send, health.problem) == ("home", True, "")
    info = sender.describe()
    assert [s.slot for s in info.sims] == [0, 1]
    assert info.sims[0].carrier == "Econet"
    assert info.capabilities is not None
    assert (
        info.capabilities.backend,
        info.capabilities.delivery_reports,
        info.capabilities.inbound_sms,
    ) == ("termux", False, True)


def test_health_says_why_the_phone_cannot_send(phone: TermuxApiStandIn) -> None:
    battery = dict(
        phone_battery := {"percentage": 15, "plugged": "UNPLUGGED", "status": "DISCHARGING"}
    )
    phone.update(battery=phone_battery)
    # Words for the device list, and the code held commands are given back with.
    cases = {
        "absent": ("no SIM card", "SIM_MISSING"),
        "pin_required": ("enter its PIN", "SIM_PIN_REQUIRED"),
        "puk_required": ("PUK", "SIM_PIN_REQUIRED"),
    }
    for state, (words, code) in cases.items():
        phone.update_deviceinfo(sim_state=state)
        health = trio.run(TermuxSender().health)
        assert not health.can_send, (state, health)
        assert words in health.problem, (state, health)
        assert give_back_code(health) == code
    assert (health.battery, health.charging) == (battery["percentage"], False)

    phone.update_deviceinfo(sim_state="ready", network_operator="", network_operator_name="")
    health = trio.run(TermuxSender().health)
    assert (health.can_send, health.network) == (False, "not_registered")
    assert "no mobile network" in health.problem
    assert give_back_code(health) == "NO_SERVICE"

    phone.update_deviceinfo(network_operator="65501", network_roaming=True)
    health = trio.run(TermuxSender().health)
    assert (health.can_send, health.network) == (True, "roaming")


def test_a_sim_slot_the_phone_does_not_have_stops_sending(phone: TermuxApiStandIn) -> None:
    """Termux:API sends nothing and exits 0 for a slot that does not exist: say so before."""
    health = trio.run(TermuxSender(sim_slot=2).health)
    assert not health.can_send
    assert "SIM slot 2 does not exist" in health.problem


def test_without_cell_permission_signal_is_unknown_and_not_asked_again(
    phone: TermuxApiStandIn,
) -> None:
    """Each refused call opens a permission dialog on the phone."""
    phone.update(denied=["termux-telephony-cellinfo"])
    sender = TermuxSender(health_interval=0)

    async def twice() -> None:
        assert (await sender.health()).signal is None
        assert (await sender.health()).can_send

    trio.run(twice)
    assert len(phone.calls("termux-telephony-cellinfo")) == 1


def test_a_refused_phone_permission_is_asked_again_only_once_a_minute(
    phone: TermuxApiStandIn,
) -> None:
    phone.update(denied=["termux-telephony-deviceinfo"])
    sender = TermuxSender()

    async def twice() -> list[str]:
        return [(await sender.health()).problem for _ in range(2)]

    problems = trio.run(twice)
    assert "android.permission.READ_PHONE_STATE" in problems[0]
    assert problems[0] == problems[1]
    assert len(phone.calls("termux-telephony-deviceinfo")) == 2  # the constructor's, one read


def test_without_termux_api_nothing_is_sent_and_health_says_what_to_install(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no termux-* anywhere
    health = trio.run(TermuxSender().health)
    assert not health.can_send
    assert "Termux:API" in health.problem
    assert "pkg install termux-api" in health.problem
    part = trio.run(TermuxSender().send, request("x")).parts[0]
    assert part.error_code == "DEVICE_ERROR"
    assert "termux-sms-send not found" in part.error_message


# --- end to end: REST → server → Envoy → `zimsend device run --backend termux` --------------


AgentOnTermux = tuple[Program, TermuxApiStandIn, str]


@pytest.fixture
def termux_agent(
    stack: Stack,
    tmp_path: Path,
    zimsend_env: dict[str, str],
) -> Iterator[AgentOnTermux]:
    """`zimsend device run --backend termux` paired through REST, its stand-ins on PATH."""
    phone = TermuxApiStandIn(tmp_path / "phone").install()
    phone.receive("+263770000009", "an old SMS, before the gateway")
    created = httpx.post(
        f"{stack.base_url}/v1/devices",
        headers=stack.auth,
        json={"name": "termux-phone"},
        timeout=10,
    )
    assert created.status_code == 200, created.text
    device = created.json()
    env = dict(zimsend_env, PATH=phone.path_env())
    argv = [
        ZIMSEND,
        "device",
        "run",
        "--pairing",
        device["pairing_uri"],
        "--server",
        stack.envoy.device_target,
        "--backend",
        "termux",
        "--sim-slot",
        "0",
        "--sms-poll-interval",
        "0.2",
        "--journal",
        str(tmp_path / "journal.sqlite3"),
    ]
    with Program(argv, env=env, log_path=tmp_path / "agent.log", name="termux agent") as agent:
        yield agent, phone, device["device_id"]


@pytest.mark.slow
def test_a_termux_phone_sends_and_receives_through_the_whole_stack(
    stack: Stack,
    termux_agent: AgentOnTermux,
) -> None:
    agent, phone, device_id = termux_agent
    base, headers = stack.base_url, stack.auth

    def get(path: str) -> dict[str, Any]:
        reply = httpx.get(f"{base}{path}", headers=headers, timeout=10)
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body

    def wait(predicate: Callable[[], T], what: str, timeout: float = 30) -> T:
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            assert time.monotonic() < deadline, f"timed out waiting for {what}\n{agent.output()}"
            time.sleep(0.1)
        return value

    wait(lambda: get(f"/v1/devices/{device_id}")["status"] == "online", "the phone online")
    text = "Rendezvous at 10:00 — reply YES to confirm"
    sent = httpx.post(
        f"{base}/v1/sms/send",
        headers={**headers, "X-Device-ID": device_id},
        json={"to": "+263771234567", "message": text},
        timeout=10,
    )
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]
    wait(lambda: get(f"/v1/sms/status/{message_id}")["status"] == "sent", "status sent")
    assert phone.sent() == [{"recipients": ["+263771234567"], "slot": 0, "text": text}]

    phone.receive("+263772222222", "YES")

    def inbox() -> list[dict[str, Any]]:
        return [m for m in get("/v1/sms/inbox")["data"] if m.get("from") == "+263772222222"]

    wait(inbox, "the SMS in the inbox")
    time.sleep(1.0)  # several more polls: still once
    assert [m["message"] for m in inbox()] == ["YES"]
    assert all(m["device_id"] == device_id for m in inbox())
    assert not any("old SMS" in m["message"] for m in get("/v1/sms/inbox")["data"])

    # No delivery reports through Termux:API: the status stays `sent`, never invented.
    assert get(f"/v1/sms/status/{message_id}")["status"] == "sent"
    device = get(f"/v1/devices/{device_id}")
    assert device["capabilities"] == {
        "backend": "termux",
        "delivery_reports": False,
        "inbound_sms": True,
    }, device
    assert [sim["slot"] for sim in device["sims"]] == [0, 1], device
    assert (device["battery"], device["charging"], device["signal"], device["network"]) == (
        87,
        True,
        3,
        "home",
    )
    assert text not in agent.output()  # the text is never logged
