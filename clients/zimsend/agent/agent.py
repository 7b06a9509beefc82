"""The device agent: one phone, one nursery.

    run_agent(config, sender)
      ├── sender.run(events)           delivery reports and inbound SMS from the backend
      ├── _consume(events)             journal them, hand them to the reporter
      ├── executor.run()               queued commands → SIM, within the live settings
      └── supervise(...)               connect / session / backoff / refusal
            └── Session.run()          hello, welcome, reader, reporter.pump, heartbeats

Why this split: the SIM side (executor, sender) never waits for the network side (supervisor,
sessions), and both meet only in the journal. A dropped stream therefore never interrupts a
handoff, and nothing the phone learnt while offline is lost.

`run_agent` returns only by raising: `AgentStopped` (refused or told to stop; carries the exit
code) or cancellation (Ctrl-C), in which case a handoff in progress finishes first.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _dist_version
from pathlib import Path

import grpc
import trio

from zimsend.agent.backoff import Backoff
from zimsend.agent.executor import Executor
from zimsend.agent.journal import Journal
from zimsend.agent.link import Link
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import DeliveryReport, InboundSms, Sender, SenderEvent
from zimsend.agent.session import Session
from zimsend.agent.supervisor import AgentStopped, ConnectionTarget, supervise
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["AgentConfig", "AgentStopped", "run_agent"]

log = logging.getLogger("zimsend.agent")

try:
    APP_VERSION = _dist_version("zimsend-client")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without metadata
    APP_VERSION = "0.0.0"


@dataclass(frozen=True)
class AgentConfig:
    """Everything `zimsend device run` needs. The password never appears in `repr()`."""

    server: str
    client_id: str
    device_id: str
    password: str = field(repr=False)
    journal: Path = Path("zimsend-journal.sqlite3")
    tls: bool = False
    ca_file: Path | None = None
    backoff_cap: float = 60.0
    #: Threads for response readers (one per stream); see link.py for why it is dedicated.
    max_streams: int = 16

    def target(self) -> ConnectionTarget:
        credentials = None
        if self.tls:
            roots = self.ca_file.read_bytes() if self.ca_file else None
            credentials = grpc.ssl_channel_credentials(root_certificates=roots)
        return ConnectionTarget(
            server=self.server,
            metadata=(
                ("x-client-id", self.client_id),
                ("x-device-id", self.device_id),
                ("x-device-password", self.password),
            ),
            credentials=credentials,
        )


async def run_agent(
    config: AgentConfig,
    sender: Sender,
    *,
    limiter: trio.CapacityLimiter | None = None,
    backoff: Backoff | None = None,
) -> None:
    """Run the agent until it is stopped (AgentStopped) or cancelled."""
    journal = Journal.open(config.journal, config.device_id)
    try:
        journal.prune()
        recovered = journal.recover()
        if recovered:
            log.warning("%d message(s) had an unknown outcome after a restart; reported as"
                        " failed (DEVICE_ERROR), not re-sent", len({f.report.message_id
                                                                    for f in recovered}))
        reporter = Reporter(journal)
        executor = Executor(journal, sender, reporter)
        limiter = limiter or trio.CapacityLimiter(config.max_streams)
        events_send, events_recv = trio.open_memory_channel[SenderEvent](256)

        async def session(link: Link, on_welcome: Callable[[pb.Welcome], None]) -> None:
            await Session(link, journal, executor, reporter, sender, APP_VERSION,
                          on_welcome=on_welcome).run()

        stopped: AgentStopped | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, events_send)
            nursery.start_soon(_consume, events_recv, journal, reporter)
            nursery.start_soon(executor.run)
            try:
                await supervise(config.target(), session, limiter=limiter,
                                backoff=backoff or Backoff(cap=config.backoff_cap))
            except AgentStopped as exc:
                stopped = exc
            nursery.cancel_scope.cancel()
        if stopped is not None:
            raise stopped
    finally:
        journal.close()


async def _consume(
    events: trio.MemoryReceiveChannel[SenderEvent], journal: Journal, reporter: Reporter
) -> None:
    async for event in events:
        if isinstance(event, DeliveryReport):
            frames = journal.record_delivery(event)
            reporter.add(frames)
            if frames:
                log.info("message %s part %d/%d %s", event.message_id, event.part_index + 1,
                         event.part_count, "delivered" if event.delivered else "not delivered")
        elif isinstance(event, InboundSms):
            frame = journal.add_inbound(event)
            reporter.add([frame])
            log.info("inbound SMS from %s", event.sender)

