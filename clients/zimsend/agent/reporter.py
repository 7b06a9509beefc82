"""Reports the server has not acknowledged yet, and their delivery on each stream (trio).

Why a separate task per stream: a report is only forgotten when the server's ReportAck names
it, so every new stream starts by replaying every unacknowledged report (the server ignores a
report id it already stored), then sends new ones as they come. Reports live in the journal;
what is pending and what this stream sent is the sans-I/O `protocol.ReportBook` (the fleet
keeps the same book); this class adds trio's wake-up and the writing.

Cancellation: `pump` is per stream and is cancelled with it; nothing is lost, since a report
leaves `pending` only on ReportAck.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

import trio

from zimsend.agent.journal import Journal
from zimsend.agent.protocol import ReportBook
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["Reporter"]

log = logging.getLogger("zimsend.agent")


class FrameSink(Protocol):
    """What `Reporter.pump` needs of a stream (`link.Link` is one): a way to send a frame."""

    async def send(self, frame: pb.DeviceFrame) -> None: ...


class Reporter:
    """Holds unacknowledged reports (`book`) and streams them to the current Link."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self.book = ReportBook(journal.unacked_reports())
        self._changed = trio.Event()

    @property
    def unacked(self) -> int:
        """How many reports wait for a ReportAck."""
        return self.book.unacked

    @property
    def in_flight(self) -> int:
        """How many reports the current stream sent and the server has not acknowledged."""
        return self.book.in_flight

    def add(self, frames: Iterable[pb.DeviceFrame]) -> None:
        """Queue already-journaled reports for sending (wakes the current stream's pump)."""
        if self.book.add(frames):
            self.wake()

    def wake(self) -> None:
        """Reports were added to the book: the pump sends them."""
        self._changed.set()
        self._changed = trio.Event()

    def acked(self, report_ids: list[str]) -> int:
        """The server stored these reports: forget them (journal first). Returns how many."""
        count = self._journal.ack_reports(report_ids)
        self.book.forget(report_ids)
        return count

    async def pump(self, link: FrameSink) -> None:
        """Send every pending report once on this link (replay first), then new ones; runs
        until cancelled with its stream."""
        self.book.new_stream()
        while True:
            changed = self._changed
            for frame in self.book.due():
                await link.send(frame)
            await changed.wait()
