"""Reports the server has not acknowledged yet, and their delivery on each stream.

Why a separate task per stream: a report is only forgotten when the server's ReportAck names
it, so every new stream starts by replaying every unacknowledged report (the server ignores a
report id it already stored), then sends new ones as they come. Reports live in the journal;
this class keeps an in-memory mirror in journal order.

Cancellation: `pump` is per stream and is cancelled with it; nothing is lost, since a report
leaves `pending` only on ReportAck.
"""

from __future__ import annotations

import logging
from typing import Protocol

import trio

from zimsend.agent.journal import Journal
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["Reporter"]

log = logging.getLogger("zimsend.agent")


def report_id(frame: pb.DeviceFrame) -> str:
    """The phone-chosen id of a status or inbound report."""
    return frame.report.report_id if frame.HasField("report") else frame.inbound.report_id


class FrameSink(Protocol):
    """What `Reporter.pump` needs of a stream (`link.Link` is one): a way to send a frame."""

    async def send(self, frame: pb.DeviceFrame) -> None: ...


class Reporter:
    """Holds unacknowledged reports and streams them to the current Link."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        # report id -> (frame, generation); a report added again (a re-report after its ack)
        # gets a new generation, so a stream that already sent it sends it once more.
        self._pending: dict[str, tuple[pb.DeviceFrame, int]] = {
            rid: (frame, 0) for rid, frame in journal.unacked_reports()
        }
        self._generation = 0
        self._changed = trio.Event()
        # report id -> generation sent on the current stream; an ack forgets it, so this holds
        # only what is in flight (it grew by every report ever sent: 16 MB over 30,000 SMS).
        self._sent: dict[str, int] = {}

    @property
    def unacked(self) -> int:
        """How many reports wait for a ReportAck."""
        return len(self._pending)

    @property
    def in_flight(self) -> int:
        """How many reports the current stream sent and the server has not acknowledged."""
        return len(self._sent)

    def add(self, frames: list[pb.DeviceFrame]) -> None:
        """Queue already-journaled reports for sending (wakes the current stream's pump)."""
        self._generation += 1
        for frame in frames:
            self._pending[report_id(frame)] = (frame, self._generation)
        if frames:
            self._changed.set()
            self._changed = trio.Event()

    def acked(self, report_ids: list[str]) -> int:
        """The server stored these reports: forget them (journal first). Returns how many."""
        count = self._journal.ack_reports(report_ids)
        for rid in report_ids:
            self._pending.pop(rid, None)
            self._sent.pop(rid, None)
        return count

    async def pump(self, link: FrameSink) -> None:
        """Send every pending report once on this link (replay first), then new ones; runs
        until cancelled with its stream."""
        sent: dict[str, int] = {}
        self._sent = sent
        while True:
            changed = self._changed
            for rid, (frame, generation) in list(self._pending.items()):
                if sent.get(rid) != generation and rid in self._pending:
                    await link.send(frame)
                    if rid in self._pending:  # not acknowledged while it was being sent
                        sent[rid] = generation
            await changed.wait()
