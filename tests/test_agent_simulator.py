"""The simulated phone: deterministic with a seed, honest outbox, per-part delivery reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from zimsend.agent.senders.base import DeliveryReport, InboundSms, SenderEvent, SendRequest
from zimsend.agent.senders.simulator import SimulatorSender
from zimsend.agent.simulation import Simulation, SimulationConfig, read_outbox


def request(message_id: str, parts: int = 1) -> SendRequest:
    return SendRequest(message_id, "+263771234567", "x" * parts, tuple("x" * parts))


def decisions(config: SimulationConfig, ids: list[str]) -> dict[str, object]:
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
    failures = [d.failure for d in got if d.failure]  # type: ignore[attr-defined]
    assert 200 < len(failures) < 400
    assert set(failures) == {"NO_CREDIT", "TIMEOUT"}
    assert all(d.failure is None for d in decisions(SimulationConfig(seed=7), ["a", "b"]).values())  # type: ignore[attr-defined]


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


def test_the_simulator_sender_reports_delivery_per_part_and_injects_inbound_sms() -> None:
    sender = SimulatorSender(SimulationConfig(seed=3, send_delay=0.001, delivery_delay=0.01))
    events: list[SenderEvent] = []

    async def main() -> None:
        send, receive = trio.open_memory_channel[SenderEvent](100)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, send)
            result = await sender.send(request("msg_1", parts=3))
            assert result.ok and len(result.parts) == 3
            sender.inject_inbound(InboundSms(sender="+263770000000", body="hi"))
            with trio.fail_after(5):
                for _ in range(4):
                    events.append(await receive.receive())
            nursery.cancel_scope.cancel()

    trio.run(main)
    delivered = sorted(e.part_index for e in events if isinstance(e, DeliveryReport))
    assert delivered == [0, 1, 2]
    assert [e.body for e in events if isinstance(e, InboundSms)] == ["hi"]


def test_generated_inbound_sms_are_deterministic_per_seed() -> None:
    a = Simulation(SimulationConfig(seed=5), device_id="d").next_inbound()
    b = Simulation(SimulationConfig(seed=5), device_id="d").next_inbound()
    assert (a.sender, a.body) == (b.sender, b.body)
    assert a.sender.startswith("+2637")
