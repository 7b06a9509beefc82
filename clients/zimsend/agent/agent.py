"""The device agent: one phone, one nursery.

    run_agent(config, sender)
      ├── sender.run(recorder)         delivery reports and inbound SMS, journaled as they come
      ├── health.run()                 the sender's health, polled: can it send right now?
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
from zimsend.agent.executor import GIVE_BACK_AFTER_S, Executor
from zimsend.agent.health import HealthWatch
from zimsend.agent.journal import Journal
from zimsend.agent.link import Link
from zimsend.agent.reporter import Reporter
from zimsend.agent.senders.base import AwaitingPart, DeliveryReport, InboundSms, Sender
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
    #: Seconds unable to send before the held commands are given back (executor.py).
    give_back_after: float = GIVE_BACK_AFTER_S
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
            log.warning(
                "%d message(s) had an unknown outcome after a restart; reported as"
                " failed (DEVICE_ERROR), not re-sent",
                len({f.report.message_id for f in recovered}),
            )
        reporter = Reporter(journal)
        health = HealthWatch(sender)
        executor = Executor(
            journal, sender, reporter, health, give_back_after=config.give_back_after
        )
        limiter = limiter or trio.CapacityLimiter(config.max_streams)

        async def session(link: Link, on_welcome: Callable[[pb.Welcome], None]) -> None:
            await Session(
                link,
                journal,
                executor,
                reporter,
                sender,
                health,
                APP_VERSION,
                on_welcome=on_welcome,
            ).run()

        stopped: AgentStopped | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sender.run, JournalRecorder(journal, reporter))
            nursery.start_soon(health.run)
            nursery.start_soon(executor.run)
            try:
                await supervise(
                    config.target(),
                    session,
                    limiter=limiter,
                    backoff=backoff or Backoff(cap=config.backoff_cap),
                )
            except AgentStopped as exc:
                stopped = exc
            nursery.cancel_scope.cancel()
        if stopped is not None:
            raise stopped
    finally:
        journal.close()


class JournalRecorder:
    """The `Recorder` a sender writes to: the journal, then the reporter (see senders/base)."""

    def __init__(self, journal: Journal, reporter: Reporter) -> None:
        self._journal = journal
        self._reporter = reporter

    def delivery(self, report: DeliveryReport) -> bool:
        frames = self._journal.record_delivery(report)
        self._reporter.add(frames)
        for frame in frames:
            r = frame.report
            log.info(
                "message %s part %d/%d %s",
                r.message_id,
                r.part_index + 1,
                r.part_count,
                "delivered" if report.delivered else f"not delivered ({r.error_code})",
            )
        return bool(frames)

    def inbound(self, sms: InboundSms) -> bool:
        frame = self._journal.add_inbound(sms)
        if frame is None:
            return False
        self._reporter.add([frame])
        log.info("inbound SMS from %s", sms.sender)
        return True

    def seen_inbound(self, source_id: str) -> bool:
        return self._journal.seen_inbound(source_id)

    def mark_inbound_seen(self, source_id: str) -> None:
        self._journal.mark_inbound_seen(source_id)

    def latest_inbound(self, prefix: str) -> str | None:
        return self._journal.latest_inbound(prefix)

    def awaiting_delivery(self) -> list[AwaitingPart]:
        return self._journal.awaiting_delivery()
