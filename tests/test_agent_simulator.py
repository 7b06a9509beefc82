"""The simulated phone: deterministic with a seed, honest outbox, per-part delivery reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from zimsend.agent.agent import JournalRecorder
from zimsend.agent.health import give_back_code
from zimsend.agent.journal import Journal
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import Health, InboundSms, SendRequest
from zimsend.agent.senders.simulator import SimulatorSender
from zimsend.agent.simulation import SendDecision, Simulation, SimulationConfig, read_outbox
from zimsend.v1 import device_link_pb2 as pb


def request(message_id: str, parts: int = 1) -> SendRequest:
    return SendRequest(message_id, "+263771234567", "x" * parts, tuple("x" * parts))


def decisions(config: SimulationConfig, ids: list[str]) -> dict[str, SendDecision]:
    sim = Simulation(config, device_id="dev1")
    return {mid: sim.decide(mid) for mid in ids}


def test_the_same_seed_gives_the_same_outcomes_whatever_the_order() -> None:
    config = SimulationConfig(seed=42, failure_rate=0.5)
    ids = [f"msg_{i}" for i in range(50)]
    assert decisions(config, ids) == decisions(config, list(reversed(ids)))


def test_another_seed_gives_other_outcomes() -> None:
    ids = [f"msg_{i}" for i in range(50)]
    a = decisions(SimulationConfig(seed=1, failure_rate=0.5), ids)
    b = decisions(SimulationConfig(seed=2, failure_rate=0.5), ids)
    assert a != b


def test_failures_follow_the_rate_and_use_the_configured_codes() -> None:
    config = SimulationConfig(seed=7, failure_rate=0.3, failure_codes=("NO_CREDIT", "TIMEOUT"))
    got = decisions(config, [f"msg_{i}" for i in range(1000)]).values()
    failures = [d.failure for d in got if d.failure]
    assert 200 < len(failures) < 400
    assert set(failures) == {"NO_CREDIT", "TIMEOUT"}
    assert all(d.failure is None for d in decisions(SimulationConfig(seed=7), ["a", "b"]).values())


def test_an_unknown_failure_code_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown failure code"):
        Simulation(SimulationConfig(failure_codes=("OOPS",)))


def test_the_outbox_has_one_line_per_sms_that_left_and_none_for_failures(
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "outbox.jsonl"
    sim = Simulation(SimulationConfig(seed=1, outbox=outbox), device_id="dev1")
    sim.complete(request("msg_1", parts=2), sim.decide("msg_1"))
    sim.complete(request("msg_2"), sim.decide("msg_2"))
    failing = Simulation(SimulationConfig(seed=1, failure_rate=1.0, outbox=outbox))
    result = failing.complete(request("msg_3"), failing.decide("msg_3"))
    assert not result.ok
    lines = [json.loads(line) for line in outbox.read_text().splitlines()]
    assert [(line["message_id"], line["parts"]) for line in lines] == [("msg_1", 2), ("msg_2", 1)]
    assert set(lines[0]) >= {"message_id", "to", "body", "parts", "sent_at"}
    assert read_outbox(outbox) == {"msg_1": 1, "msg_2": 1}
    assert sim.sends == {"msg_1": 1, "msg_2": 1}
    assert read_outbox(tmp_path / "missing.jsonl") == {}


def _command(message_id: str, body: str) -> pb.SendCommand:
    return pb.SendCommand(
        command_id=f"cmd_{message_id}", message_id=message_id, to="+263771234567", body=body
    )


def _send_through_journal(
    journal: Journal, sender: SimulatorSender, message_id: str, parts: int
) -> None:
    """What the executor does around `send()`: admit, begin, hand off, finish."""
    journal.admit(_command(message_id, "x" * parts))
    assert journal.begin_send(message_id)

    async def hand_off() -> None:
        journal.finish_send(message_id, await sender.send(request(message_id, parts)))

    trio.run(hand_off)


def _delivered_parts(journal: Journal, message_id: str) -> list[int]:
    return sorted(
        frame.report.part_index
        for _, frame in journal.unacked_reports()
        if frame.HasField("report")
        and frame.report.message_id == message_id
        and frame.report.outcome == pb.StatusReport.OUTCOME_DELIVERED
    )


def test_the_simulator_sender_records_delivery_per_part_and_inbound_sms(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3", "dev1")
    recorder = JournalRecorder(journal, Reporter(journal))
    sender = SimulatorSender(SimulationConfig(seed=3, send_delay=0.001, delivery_delay=0.01))
    _send_through_journal(journal, sender, "msg_1", parts=3)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, recorder)
            sender.inject_inbound(InboundSms(sender="+263770000000", body="hi"))
            with trio.fail_after(5):
                while len(_delivered_parts(journal, "msg_1")) < 3:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.01)
                while not any(f.HasField("inbound") for _, f in journal.unacked_reports()):  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _delivered_parts(journal, "msg_1") == [0, 1, 2]
    inbound = [f.inbound.body for _, f in journal.unacked_reports() if f.HasField("inbound")]
    assert inbound == ["hi"]


def test_a_restarted_simulator_still_reports_delivery_of_what_it_sent_before(
    tmp_path: Path,
) -> None:
    """The phone stopped between the handoff and the network's report (issue: messages stuck
    `sent` forever): the next process finds the awaiting parts in the journal and the
    simulated network delivers them."""
    path = tmp_path / "j.sqlite3"
    journal = Journal.open(path, "dev1")
    config = SimulationConfig(seed=3, send_delay=0.001, delivery_delay=0.05)
    _send_through_journal(journal, SimulatorSender(config), "msg_1", parts=2)
    journal.close()  # the process dies: its scheduled reports die with it

    journal = Journal.open(path, "dev1")
    assert [(a.message_id, a.part_index) for a in journal.awaiting_delivery()] == [
        ("msg_1", 0),
        ("msg_1", 1),
    ]
    sender = SimulatorSender(config)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, JournalRecorder(journal, Reporter(journal)))
            with trio.fail_after(5):
                while journal.awaiting_delivery():  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert _delivered_parts(journal, "msg_1") == [0, 1]


def test_generated_inbound_sms_are_deterministic_per_seed() -> None:
    a = Simulation(SimulationConfig(seed=5), device_id="d").next_inbound()
    b = Simulation(SimulationConfig(seed=5), device_id="d").next_inbound()
    assert (a.sender, a.body) == (b.sender, b.body)
    assert a.sender.startswith("+2637")


def test_the_health_file_takes_the_network_or_the_sim_away(tmp_path: Path) -> None:
    """`--health-file`: the simulated phone cannot send while the file holds a before-send
    code, and says which (the code its held commands are given back with)."""
    health_file = tmp_path / "health"
    simulation = Simulation(SimulationConfig(seed=1, health_file=health_file))
    assert simulation.health().can_send  # no file: a healthy phone
    for code in ("NO_SERVICE", "SIM_MISSING", "SIM_PIN_REQUIRED", "RADIO_OFF"):
        health_file.write_text(code.lower() + "\n")
        health = simulation.health()
        assert (health.can_send, give_back_code(health)) == (False, code)
        assert health.problem
    health_file.write_text("")
    assert simulation.health().can_send
    health_file.write_text("typo")  # an unknown word still takes the network away
    assert give_back_code(simulation.health()) == "NO_SERVICE"


def test_a_give_back_code_is_always_a_before_send_code() -> None:
    assert give_back_code(Health(None, None, None, network="searching", can_send=False)) == (
        "NO_SERVICE"
    )
    assert give_back_code(Health(None, None, None, can_send=False, problem="?")) == (
        "MODEM_REFUSED"
    )
    # A sender's own code is used only when it proves the SMS stayed on the phone.
    assert (
        give_back_code(
            Health(None, None, None, network="denied", can_send=False, failure_code="TIMEOUT")
        )
        == "NO_SERVICE"
    )
