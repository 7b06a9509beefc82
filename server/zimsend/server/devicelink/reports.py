"""Storing what phones report — status reports and inbound SMS — with group commit.

Why group commit: a report is a few small writes (the processed-report mark, the message, its
part, an outbox row, a daily counter). One transaction per report would make the SQLite write
lock the bottleneck at a few thousand reports a second; one transaction per *batch* amortises
the commit (DESIGN: "batched reports"). A single writer task takes everything queued, applies
it in one transaction, and only after the commit sends each phone its ReportAck — a report
arriving while a write is in flight simply joins the next batch, so there is no added delay
when the server is idle. The acks of a busy phone are sent at most every
`session.ACK_INTERVAL_S` (`DeviceSession.ack_reports`), several batches' reports per frame.

If a batch fails (a bug, or a report the database rejects), its reports are retried one
transaction each, so one bad report cannot hold back the others; a report that still fails is
not acknowledged (the phone keeps it and replays it on its next stream) and is logged. The
queue, the writer task and the retries are the shared group-commit helper's
(`storage.group_commit`: `AsyncLane`, `commit_each`).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlmodel import Session

from zimsend.server import logs, metrics
from zimsend.server.devicelink.session import DeviceSession
from zimsend.server.devicelink.transitions import (
    Failover,
    Outcome,
    PartReport,
    Transition,
    apply_part_reports,
    record_inbound,
)
from zimsend.server.state import ServerState
from zimsend.server.storage import Database, utcnow
from zimsend.server.storage.group_commit import AsyncLane, commit_each
from zimsend.v1 import device_link_pb2 as pb

__all__ = ["InboundItem", "ReportWriter", "status_report"]

log = logs.get("zimsend.devicelink.reports")

#: Reports written per transaction at most (the batch was unbounded before the shared
#: helper; a burst larger than this is simply several transactions back to back).
_MAX = 10_000

_OUTCOMES: dict[int, Outcome] = {
    pb.StatusReport.OUTCOME_SENT: "sent",
    pb.StatusReport.OUTCOME_DELIVERED: "delivered",
    pb.StatusReport.OUTCOME_FAILED: "failed",
}


@dataclass(frozen=True)
class InboundItem:
    report_id: str
    sender: str
    body: str
    sim_slot: int | None
    received_at: dt.datetime | None


def status_report(report: pb.StatusReport) -> PartReport | None:
    """The protobuf report as a PartReport; None for an outcome this server does not know."""
    outcome = _OUTCOMES.get(report.outcome)
    if outcome is None:
        return None
    return PartReport(
        report_id=report.report_id,
        message_id=report.message_id,
        outcome=outcome,
        part_index=max(0, report.part_index),
        part_count=max(0, report.part_count),
        error_code=report.error_code,
        error_message=report.error_message[:500],
    )


def inbound_item(report: pb.InboundSmsReport) -> InboundItem:
    received = report.received_at.ToDatetime(dt.UTC) if report.HasField("received_at") else None
    return InboundItem(
        report_id=report.report_id,
        sender=getattr(report, "from")[:64],
        body=report.body[:5000],
        sim_slot=report.sim_slot,
        received_at=received,
    )


@dataclass(frozen=True)
class _Item:
    session: DeviceSession
    report: PartReport | InboundItem
    ack: bool = True


@dataclass
class _Outcome:
    acked: dict[int, list[str]]  # index into the batch's sessions -> report ids
    transitions: list[Transition]
    status_reports: int = 0  # stored (replays included)
    inbound_reports: int = 0


class ReportWriter:
    """One per replica. `submit()` from the stream readers; `run()` is the writer task.
    `on_applied(session, transitions)` tells the dispatcher which messages moved on."""

    def __init__(
        self,
        state: ServerState,
        on_applied: Callable[[DeviceSession, list[Transition]], None],
    ) -> None:
        self._state = state
        self._on_applied = on_applied
        # No one waits on a report's future: its ack goes to the phone after the commit.
        self._lane: AsyncLane[_Item, None] = AsyncLane("reports", self._write, max_batch=_MAX)
        self._failover = failover_of(state)

    def submit(
        self, session: DeviceSession, report: PartReport | InboundItem, *, ack: bool = True
    ) -> None:
        """Queue a report; `ack=False` for reports the server makes up itself (a refused
        command), which the phone does not hold."""
        self._lane.put(_Item(session, report, ack), wait=False)

    async def run(self) -> None:
        """The writer task (until cancelled)."""
        await self._lane.run()

    async def flush(self) -> None:
        """Write whatever is queued now (shutdown)."""
        await self._lane.flush()

    async def _write(self, batch: list[_Item]) -> Sequence[None]:
        sessions = list({id(i.session): i.session for i in batch}.values())
        index = {id(s): n for n, s in enumerate(sessions)}
        items = [
            (
                index[id(i.session)] if i.ack else -1,
                i.session.client_id,
                i.session.device_id,
                i.report,
            )
            for i in batch
        ]
        db, failover = self._state.db, self._failover
        results = await self._state.link_call(
            commit_each,
            items,
            lambda rows: [_apply_batch(db, list(rows), failover)] * len(rows),
            lambda row: _apply_batch(db, [row], failover),
            name="reports",
        )
        outcome = _merged(items, results)
        by_session: dict[int, list[Transition]] = defaultdict(list)
        message_session = {
            i.report.message_id: index[id(i.session)]
            for i in batch
            if isinstance(i.report, PartReport)
        }
        for t in outcome.transitions:
            by_session[message_session.get(t.message_id, -1)].append(t)
        metrics.count_reports(outcome.status_reports, outcome.inbound_reports)
        for n, moved in by_session.items():
            applied(moved, sessions[n].device_id if n >= 0 else None)
        for n, session in enumerate(sessions):
            ids = outcome.acked.get(n)
            if ids:
                session.ack_reports(ids)
            self._on_applied(session, by_session.get(n, []))
        return [None] * len(batch)


def failover_of(state: ServerState) -> Failover:
    """The server settings' failover rules (issue 16 item 1)."""
    settings = state.settings
    return Failover(
        max_attempts=settings.max_send_attempts,
        cooldown=dt.timedelta(seconds=settings.failover_cooldown_seconds),
        send_limit_cooldown=dt.timedelta(seconds=settings.send_limit_cooldown_seconds),
    )


def applied(transitions: list[Transition], device_id: str | None) -> None:
    """Committed status changes: counted, and one log line each with the message's request
    id (never its text)."""
    metrics.count_transitions(transitions)
    for t in transitions:
        logs.hot_info(
            log,
            "sms.status",
            request_id=t.request_id,
            message_id=t.message_id,
            device_id=device_id,
            status=t.new,
            error_code=t.error_code,
        )


#: (session index in the batch, or -1 for "do not acknowledge"), client, device, report.
_Row = tuple[int, str, str, "PartReport | InboundItem"]


def _apply(
    session_db: Session, rows: list[_Row], outcome: _Outcome, failover: Failover | None
) -> None:
    """Status reports in one `apply_part_reports` call (one statement per kind for the whole
    batch), inbound SMS one by one (rare)."""
    now = utcnow()
    parts: list[tuple[str, str, PartReport]] = []
    for n, client_id, device_id, report in rows:
        if isinstance(report, PartReport):
            parts.append((client_id, device_id, report))
            outcome.status_reports += 1
        else:
            outcome.inbound_reports += 1
            record_inbound(
                session_db,
                client_id=client_id,
                device_id=device_id,
                report_id=report.report_id,
                sender=report.sender,
                body=report.body,
                sim_slot=report.sim_slot,
                received_at=report.received_at,
                now=now,
            )
        if n >= 0:
            outcome.acked.setdefault(n, []).append(report.report_id)
    outcome.transitions += apply_part_reports(session_db, parts, now=now, failover=failover)


def _apply_batch(db: Database, rows: list[_Row], failover: Failover | None = None) -> _Outcome:
    outcome = _Outcome({}, [])
    with db.write() as session:
        _apply(session, rows, outcome, failover)
    return outcome


def _merged(rows: list[_Row], results: Sequence[_Outcome | BaseException]) -> _Outcome:
    """One outcome for the batch: its own when it committed whole (every row then holds the
    same one), else the sum of the rows written alone; a row that failed alone is logged and
    not acknowledged (the phone replays it)."""
    total = _Outcome({}, [])
    seen: set[int] = set()
    for row, one in zip(rows, results, strict=True):
        if isinstance(one, BaseException):
            logs.failure(
                log, "reports.report_failed", one, device_id=row[2], report_id=row[3].report_id
            )
            continue
        if id(one) in seen:
            continue
        seen.add(id(one))
        for n, ids in one.acked.items():
            total.acked.setdefault(n, []).extend(ids)
        total.transitions += one.transitions
        total.status_reports += one.status_reports
        total.inbound_reports += one.inbound_reports
    return total
