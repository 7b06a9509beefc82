"""What a long-running agent keeps per message is bounded (issue 12 item 12: the agent's RSS
grew by 16 MB over 30,000 messages). The reporter kept the id of every report it had ever sent
on a stream; the simulated phone counted every message id it ever saw."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.lowlevel

from zimsend.agent.journal import Journal
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import InboundSms
from zimsend.agent.simulation import REMEMBERED_MESSAGES, Simulation, SimulationConfig
from zimsend.v1 import device_link_pb2 as pb


class _Link:
    """A stream that acknowledges every report it carries, as the server does."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self.sent = 0

    async def send(self, frame: pb.DeviceFrame) -> None:
        await trio.lowlevel.checkpoint()
        self.sent += 1
        self.reporter.acked([frame.inbound.report_id])


def test_the_reporter_forgets_what_the_server_acknowledged(tmp_path: Path) -> None:
    journal = Journal.open(tmp_path / "j.sqlite3", "dev")
    reporter = Reporter(journal)
    link = _Link(reporter)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reporter.pump, link)
            for i in range(3000):
                frame = journal.add_inbound(
                    InboundSms(sender="+33611111111", body=f"n{i}", source_id=f"test:{i}")
                )
                assert frame is not None
                reporter.add([frame])
                if i % 100 == 0:
                    await trio.lowlevel.checkpoint()
            with trio.fail_after(120):  # a sanity bound: the journal commits every ack
                while reporter.unacked:  # noqa: ASYNC110 - polls what another process or thread changes: no event to await
                    await trio.sleep(0.01)
            nursery.cancel_scope.cancel()

    trio.run(main)
    assert link.sent == 3000
    assert reporter.unacked == 0
    assert reporter.in_flight == 0
    assert journal.unacked_reports() == []


def test_the_simulated_phone_remembers_only_recent_messages() -> None:
    simulation = Simulation(SimulationConfig(seed=1, send_delay=0))
    for i in range(REMEMBERED_MESSAGES + 1000):
        simulation.decide(f"msg_{i}")
    assert len(simulation._attempts) == REMEMBERED_MESSAGES
    last = f"msg_{REMEMBERED_MESSAGES + 999}"
    assert simulation._attempts[last] == 1
    assert "msg_0" not in simulation._attempts
