"""The durable journal: which messages this phone holds, handed to the SIM, and reported.

Why: SPEC.md §5 promises a message is sent *at most once* even when the link drops mid-send.
The server re-offers every `processing` message after a reconnect; only the phone knows whether
it already handed it to the SIM. This journal is that knowledge, in SQLite (stdlib `sqlite3`,
WAL, `synchronous=FULL` so a commit survives power loss).

The exactly-once rule (one message attempt):

1. A SendCommand is journaled `queued` *before* it is acknowledged (CommandAck means "the
   phone has it durably").
2. Before the sender is called, the row becomes `sending` in its own committed transaction.
   Only a `queued` row can become `sending`, so a second offer can never reach the SIM.
3. After the sender returns, the outcome (`sent`/`failed`, per part) and its reports are
   committed in one transaction.
4. A crash between 2 and 3 leaves `sending`. On restart `recover()` turns it into `unknown`
   and reports the message FAILED with DEVICE_ERROR ("outcome unknown, not re-sent"). We never
   re-send it: a duplicate SMS is worse than a rare unknown, and the product promise is "at most
   once". The user may resend the failed message explicitly.

An offer for a message already `sent`/`unknown` (or `failed`, when the server marks it a
redelivery) is not sent again: its journaled outcome is re-reported. A new offer (not a
redelivery) of a `failed` or `cancelled` message is the user's explicit resend and starts a new
attempt. Report ids are deterministic (journal id, message, attempt, part, outcome), so a
re-report is the same report and the server's dedup by report id makes replays harmless.

Reports stay in the journal until the server's ReportAck names them.

Synchronous and fast (a few commits per SMS): trio and asyncio callers use it directly. Several
devices may share one database (`device` column): the fleet keeps its phones in one in-memory
database (a fleet is for load tests; surviving a crash of the load generator is not the point).
"""

from __future__ import annotations

import enum
import hashlib
import json
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp

from zimsend.agent.senders.base import (
    AwaitingPart,
    DeliveryReport,
    InboundSms,
    SendResult,
    failure,
)
from zimsend.v1 import device_link_pb2 as pb
from zimsend.v1 import failures_pb2

__all__ = ["Admission", "Journal", "Verdict"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS journal_meta (
    device TEXT PRIMARY KEY,
    journal_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    device TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,              -- queued, sending, sent, failed, unknown, cancelled
    command BLOB NOT NULL,            -- the SendCommand, to resume after a restart
    parts TEXT NOT NULL DEFAULT '[]', -- per part: sent, delivered, failed
    error_code TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT '',
    handed_at REAL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (device, message_id)
);
CREATE TABLE IF NOT EXISTS part_refs (  -- parts handed to the network, for delivery reports
    device TEXT NOT NULL,
    message_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    part_index INTEGER NOT NULL,
    reference INTEGER,                -- the network's message reference (TP-MR), if known
    recipient TEXT NOT NULL,
    sent_at REAL NOT NULL,
    PRIMARY KEY (device, message_id, attempt, part_index)
);
CREATE INDEX IF NOT EXISTS ix_part_refs_reference ON part_refs (device, reference);
CREATE TABLE IF NOT EXISTS inbound_seen (  -- source ids of inbound SMS already journaled
    device TEXT NOT NULL,
    source_id TEXT NOT NULL,
    seen_at REAL NOT NULL,
    PRIMARY KEY (device, source_id)
);
CREATE TABLE IF NOT EXISTS reports (
    device TEXT NOT NULL,
    report_id TEXT NOT NULL,
    message_id TEXT,
    frame BLOB NOT NULL,
    PRIMARY KEY (device, report_id)
);
"""

_OUTCOME_LETTER = {
    pb.StatusReport.OUTCOME_SENT: "S",
    pb.StatusReport.OUTCOME_DELIVERED: "D",
    pb.StatusReport.OUTCOME_FAILED: "F",
}
#: An outcome the phone cannot know (a crash mid-send): ambiguous, never re-sent anywhere.
_DEVICE_ERROR = failure(failures_pb2.DEVICE_ERROR)
_UNKNOWN_OUTCOME = (
    "outcome unknown: the agent stopped while handing this message to the SIM;"
    " not re-sent, so that it is never sent twice"
)
#: A `sent` message waiting for delivery reports stays "pending" this long (many networks
#: never send a handset delivery report).
DELIVERY_WINDOW_S = 48 * 3600
#: Inbound source ids are remembered this long (a modem's SMS is deleted once journaled; an
#: Android inbox is read from a high-water mark), so a re-read never reports one twice.
INBOUND_MEMORY_S = 30 * 86400


class Verdict(enum.Enum):
    """What to do with an offered SendCommand."""

    NEW = "new"  # journaled as queued: acknowledge and enqueue it
    HELD = "held"  # already queued or being sent here: acknowledge only
    REREPORT = "rereport"  # already handled: acknowledge and re-send its reports, never the SMS


@dataclass(frozen=True)
class Admission:
    """The verdict on one offer and, for REREPORT, the journaled reports to send again."""

    verdict: Verdict
    reports: list[pb.DeviceFrame] = field(default_factory=list)


class Journal:
    """One device's view of a journal database. Not thread-safe: use from one thread."""

    def __init__(self, db: sqlite3.Connection, device: str) -> None:
        self._db = db
        db.row_factory = sqlite3.Row
        self.device = device
        db.executescript(_SCHEMA)
        row = db.execute(
            "SELECT journal_id FROM journal_meta WHERE device = ?", (device,)
        ).fetchone()
        if row is None:
            # Random per journal: report ids from a reinstalled agent never collide with ids the
            # server already stored (it would silently ignore them).
            self.journal_id = secrets.token_hex(6)
            with self._tx():
                db.execute("INSERT INTO journal_meta VALUES (?, ?)", (device, self.journal_id))
        else:
            self.journal_id = str(row[0])

    @classmethod
    def open(cls, path: Path | str, device: str) -> Journal:
        """Open (creating it and its folder if needed) a durable journal file."""
        if str(path) != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(str(path), isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        return cls(db, device)

    @staticmethod
    def memory_database() -> sqlite3.Connection:
        """A shared in-memory database (fleet mode: many devices, no durability)."""
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.execute("PRAGMA synchronous=OFF")
        return db

    def close(self) -> None:
        self._db.close()  # a shared (fleet) database is closed by its owner instead

    # --- commands -------------------------------------------------------------------------

    def admit(self, command: pb.SendCommand) -> Admission:
        """Decide what an offered SendCommand means here, journaling it when it is new."""
        with self._tx():
            row = self._row(command.message_id)
            if row is None:
                self._db.execute(
                    "INSERT INTO messages (device, message_id, attempt, state, command, updated_at)"
                    " VALUES (?, ?, 1, 'queued', ?, ?)",
                    (self.device, command.message_id, command.SerializeToString(), time.time()),
                )
                return Admission(Verdict.NEW)
            state, attempt = row["state"], row["attempt"]
            if state in ("queued", "sending"):
                return Admission(Verdict.HELD)
            if state == "cancelled" or (state == "failed" and not command.redelivery):
                self._db.execute(
                    "UPDATE messages SET attempt = ?, state = 'queued', command = ?, parts = '[]',"
                    " error_code = '', error_message = '', handed_at = NULL, updated_at = ?"
                    " WHERE device = ? AND message_id = ?",
                    (
                        attempt + 1,
                        command.SerializeToString(),
                        time.time(),
                        self.device,
                        command.message_id,
                    ),
                )
                return Admission(Verdict.NEW)
            return Admission(Verdict.REREPORT, self._store(self._outcome_reports(row)))

    def queued(self) -> list[pb.SendCommand]:
        """Commands received but not yet handed to the SIM, oldest first (resume on restart)."""
        return [
            pb.SendCommand.FromString(r[0])
            for r in self._db.execute(
                "SELECT command FROM messages WHERE device = ? AND state = 'queued' ORDER BY rowid",
                (self.device,),
            )
        ]

    def cancel(self, message_id: str) -> bool:
        """Cancel a message not yet handed to the SIM; False when it is too late (or unknown)."""
        with self._tx():
            cur = self._db.execute(
                "UPDATE messages SET state = 'cancelled', updated_at = ?"
                " WHERE device = ? AND message_id = ? AND state = 'queued'",
                (time.time(), self.device, message_id),
            )
            return cur.rowcount == 1

    def give_back(self, message_id: str, result: SendResult) -> list[pb.DeviceFrame]:
        """Fail a command that was never handed to the SIM (`result` carries a before-send
        code), so the server gives the message to another phone; [] when it is no longer
        `queued` (its send began: then only the sender's outcome counts). One transaction."""
        with self._tx():
            if not self.begin_send(message_id):
                return []
            self._db.execute(
                "UPDATE messages SET handed_at = NULL WHERE device = ? AND message_id = ?",
                (self.device, message_id),
            )
            return self.finish_send(message_id, result)

    # --- the send itself ------------------------------------------------------------------

    def begin_send(self, message_id: str) -> bool:
        """Durably mark the intent to hand `message_id` to the SIM. Call the sender only when
        this returns True; it returns False when the message is no longer `queued`."""
        with self._tx():
            now = time.time()
            cur = self._db.execute(
                "UPDATE messages SET state = 'sending', handed_at = ?, updated_at = ?"
                " WHERE device = ? AND message_id = ? AND state = 'queued'",
                (now, now, self.device, message_id),
            )
            return cur.rowcount == 1

    def finish_send(self, message_id: str, result: SendResult) -> list[pb.DeviceFrame]:
        """Journal the sender's per-part outcome and the reports that announce it."""
        parts = ["sent" if p.ok else "failed" for p in result.parts]
        failure = next((p for p in result.parts if not p.ok), None)
        with self._tx():
            self._db.execute(
                "UPDATE messages SET state = ?, parts = ?, error_code = ?, error_message = ?,"
                " updated_at = ? WHERE device = ? AND message_id = ? AND state = 'sending'",
                (
                    "sent" if failure is None else "failed",
                    json.dumps(parts),
                    failure.error_code if failure else "",
                    failure.error_message if failure else "",
                    time.time(),
                    self.device,
                    message_id,
                ),
            )
            row = self._row(message_id)
            assert row is not None
            to = pb.SendCommand.FromString(row["command"]).to
            sent_at = result.at.timestamp()
            self._db.executemany(
                "INSERT OR REPLACE INTO part_refs (device, message_id, attempt, part_index,"
                " reference, recipient, sent_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (self.device, message_id, row["attempt"], i, p.reference, to, sent_at)
                    for i, p in enumerate(result.parts)
                    if p.ok
                ],
            )
            return self._store(self._outcome_reports(row, at=result.at))

    def record_delivery(self, report: DeliveryReport) -> list[pb.DeviceFrame]:
        """Journal a handset delivery report for one part; [] if it matches no part awaiting
        one. A report without `message_id` is matched by the network's reference and the
        recipient (see `_part_by_reference`)."""
        with self._tx():
            if not report.message_id:
                found = self._part_by_reference(report)
                if found is None:
                    return []
                message_id, part_index = found
                report = DeliveryReport(
                    message_id,
                    part_index,
                    0,
                    report.delivered,
                    report.error_code,
                    report.error_message,
                    report.at,
                )
            row = self._row(report.message_id)
            if row is None or row["state"] != "sent":
                return []
            parts = json.loads(row["parts"])
            if not 0 <= report.part_index < len(parts) or parts[report.part_index] != "sent":
                return []
            parts[report.part_index] = "delivered" if report.delivered else "failed"
            self._db.execute(
                "UPDATE messages SET parts = ?, updated_at = ? WHERE device = ? AND message_id = ?",
                (json.dumps(parts), time.time(), self.device, report.message_id),
            )
            outcome = (
                pb.StatusReport.OUTCOME_DELIVERED
                if report.delivered
                else pb.StatusReport.OUTCOME_FAILED
            )
            frame = self._report(
                row["message_id"],
                row["attempt"],
                report.part_index,
                len(parts),
                outcome,
                report.error_code,
                report.error_message,
                report.at,
            )
            return self._store([frame])

    def awaiting_delivery(self) -> list[AwaitingPart]:
        """Parts handed to the network within the delivery window whose delivery report has
        not arrived, oldest first (a backend resumes waiting for them after a restart)."""
        rows = self._db.execute(
            "SELECT m.message_id, m.parts, r.part_index, r.reference, r.recipient, r.sent_at"
            " FROM messages m JOIN part_refs r ON r.device = m.device"
            " AND r.message_id = m.message_id AND r.attempt = m.attempt"
            " WHERE m.device = ? AND m.state = 'sent' AND r.sent_at >= ?"
            " ORDER BY r.sent_at, m.rowid, r.part_index",
            (self.device, time.time() - DELIVERY_WINDOW_S),
        ).fetchall()
        awaiting = []
        for r in rows:
            parts = json.loads(r["parts"])
            if r["part_index"] < len(parts) and parts[r["part_index"]] == "sent":
                awaiting.append(
                    AwaitingPart(
                        message_id=r["message_id"],
                        part_index=r["part_index"],
                        part_count=len(parts),
                        to=r["recipient"],
                        reference=r["reference"],
                        sent_at=datetime.fromtimestamp(r["sent_at"], UTC),
                    )
                )
        return awaiting

    def _part_by_reference(self, report: DeliveryReport) -> tuple[str, int] | None:
        """The part a modem's status report is about: same message reference, a recipient
        with the same trailing digits (networks echo national or international forms), still
        awaiting its report. References wrap at 256, so among several candidates the one
        submitted closest to the report's `submitted_at` wins, else the oldest."""
        if report.reference is None:
            return None
        digits = _digits(report.recipient)[-8:]
        candidates = [
            a
            for a in self.awaiting_delivery()
            if a.reference == report.reference and (not digits or _digits(a.to).endswith(digits))
        ]
        if not candidates:
            return None
        if report.submitted_at is not None:
            target = report.submitted_at
            best = min(candidates, key=lambda a: abs((a.sent_at - target).total_seconds()))
        else:
            best = candidates[0]
        return best.message_id, best.part_index

    def recover(self) -> list[pb.DeviceFrame]:
        """After a restart: every `sending` row (crash mid-handoff) becomes `unknown` and is
        reported FAILED/DEVICE_ERROR. It is never re-sent (see the module docstring)."""
        with self._tx():
            crashed = [
                str(r[0])
                for r in self._db.execute(
                    "SELECT message_id FROM messages WHERE device = ? AND state = 'sending'"
                    " ORDER BY rowid",
                    (self.device,),
                )
            ]
            self._db.execute(
                "UPDATE messages SET state = 'unknown', error_code = ?,"
                " error_message = ?, updated_at = ? WHERE device = ? AND state = 'sending'",
                (_DEVICE_ERROR, _UNKNOWN_OUTCOME, time.time(), self.device),
            )
            rows = [self._row(mid) for mid in crashed]
            return self._store([f for r in rows if r is not None for f in self._outcome_reports(r)])

    def prune(self, older_than_s: float = 30 * 86400) -> int:
        """Forget finished messages untouched for `older_than_s` whose reports are all
        acknowledged: the server has stored their outcome, so it will never re-offer them."""
        with self._tx():
            cur = self._db.execute(
                "DELETE FROM messages WHERE device = ? AND updated_at < ?"
                " AND state IN ('sent', 'failed', 'unknown', 'cancelled')"
                " AND message_id NOT IN (SELECT message_id FROM reports WHERE device = ?"
                " AND message_id IS NOT NULL)",
                (self.device, time.time() - older_than_s, self.device),
            )
            self._db.execute(
                "DELETE FROM part_refs WHERE device = ? AND sent_at < ?",
                (self.device, time.time() - max(older_than_s, DELIVERY_WINDOW_S)),
            )
            # The newest source id of each backend stays: it is that backend's high-water mark.
            self._db.execute(
                "DELETE FROM inbound_seen WHERE device = ? AND seen_at < ? AND rowid NOT IN"
                " (SELECT MAX(rowid) FROM inbound_seen WHERE device = ?"
                "  GROUP BY substr(source_id, 1, instr(source_id, ':')))",
                (self.device, time.time() - INBOUND_MEMORY_S, self.device),
            )
            return cur.rowcount

    def sends_since(self, since: float) -> int:
        """Messages handed to the SIM since `since` (epoch seconds): the daily cap's count."""
        return int(
            self._db.execute(
                "SELECT COUNT(*) FROM messages WHERE device = ? AND handed_at >= ?",
                (self.device, since),
            ).fetchone()[0]
        )

    # --- reports --------------------------------------------------------------------------

    def add_inbound(self, sms: InboundSms) -> pb.DeviceFrame | None:
        """Journal an inbound SMS report until the server acknowledges it; None when its
        `source_id` was journaled before (the same SMS read again: reported once)."""
        if sms.source_id:
            suffix = hashlib.sha256(sms.source_id.encode()).hexdigest()[:20]
        else:
            suffix = secrets.token_hex(8)
        frame = pb.DeviceFrame(
            inbound=pb.InboundSmsReport(
                report_id=f"{self.journal_id}.in.{suffix}",
                body=sms.body,
                sim_slot=sms.sim_slot,
                received_at=_timestamp(sms.received_at),
            )
        )
        setattr(frame.inbound, "from", sms.sender)  # `from` is a Python keyword
        with self._tx():
            if sms.source_id and not self._mark_seen(sms.source_id):
                return None
            self._store([frame])
        return frame

    def seen_inbound(self, source_id: str) -> bool:
        """Whether an inbound SMS with this source id was journaled (or marked seen)."""
        return (
            self._db.execute(
                "SELECT 1 FROM inbound_seen WHERE device = ? AND source_id = ?",
                (self.device, source_id),
            ).fetchone()
            is not None
        )

    def mark_inbound_seen(self, source_id: str) -> None:
        """Remember a source id without reporting it."""
        with self._tx():
            self._mark_seen(source_id)

    def latest_inbound(self, prefix: str) -> str | None:
        """The most recently journaled source id starting with `prefix`."""
        row = self._db.execute(
            "SELECT source_id FROM inbound_seen WHERE device = ? AND substr(source_id, 1, ?) = ?"
            " ORDER BY rowid DESC LIMIT 1",
            (self.device, len(prefix), prefix),
        ).fetchone()
        return None if row is None else str(row[0])

    def _mark_seen(self, source_id: str) -> bool:
        cur = self._db.execute(
            "INSERT OR IGNORE INTO inbound_seen (device, source_id, seen_at) VALUES (?, ?, ?)",
            (self.device, source_id, time.time()),
        )
        return cur.rowcount == 1

    def unacked_reports(self) -> list[tuple[str, pb.DeviceFrame]]:
        """Reports (status and inbound) the server has not acknowledged, oldest first."""
        rows = self._db.execute(
            "SELECT report_id, frame FROM reports WHERE device = ? ORDER BY rowid", (self.device,)
        ).fetchall()
        return [(str(r[0]), pb.DeviceFrame.FromString(r[1])) for r in rows]

    def ack_reports(self, report_ids: Iterable[str]) -> int:
        """Forget acknowledged reports; returns how many were still held."""
        ids = list(report_ids)
        with self._tx():
            cur = self._db.executemany(
                "DELETE FROM reports WHERE device = ? AND report_id = ?",
                [(self.device, rid) for rid in ids],
            )
            return max(cur.rowcount, 0)

    def pending_message_ids(self) -> list[str]:
        """DeviceHello.pending_message_ids: held but not yet finally reported."""
        rows = self._db.execute(
            "SELECT message_id FROM messages WHERE device = ? AND ("
            " state IN ('queued', 'sending')"
            " OR (state = 'sent' AND parts LIKE '%\"sent\"%' AND handed_at >= ?)"
            " OR message_id IN (SELECT message_id FROM reports WHERE device = ?))"
            " ORDER BY rowid",
            (self.device, time.time() - DELIVERY_WINDOW_S, self.device),
        ).fetchall()
        return [str(r[0]) for r in rows]

    def state(self, message_id: str) -> str | None:
        """The journaled state of a message (for logs and tests)."""
        return None if (row := self._row(message_id)) is None else str(row["state"])

    # --- internals ------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[None]:
        if self._db.in_transaction:  # nested: the outer transaction commits
            yield
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _row(self, message_id: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._db.execute(
            "SELECT * FROM messages WHERE device = ? AND message_id = ?", (self.device, message_id)
        ).fetchone()
        return row

    def _outcome_reports(
        self, row: sqlite3.Row, at: datetime | None = None
    ) -> list[pb.DeviceFrame]:
        """The reports that state a message's journaled outcome (deterministic ids)."""
        mid, attempt, state = row["message_id"], row["attempt"], row["state"]
        if state == "unknown":
            return [
                self._report(
                    mid,
                    attempt,
                    0,
                    0,
                    pb.StatusReport.OUTCOME_FAILED,
                    row["error_code"],
                    row["error_message"],
                    at,
                )
            ]
        parts: list[str] = json.loads(row["parts"])
        n = len(parts)
        frames = []
        for i, part in enumerate(parts):
            if part in ("sent", "delivered"):
                frames.append(self._report(mid, attempt, i, n, pb.StatusReport.OUTCOME_SENT, at=at))
            if part == "delivered":
                frames.append(
                    self._report(mid, attempt, i, n, pb.StatusReport.OUTCOME_DELIVERED, at=at)
                )
            if part == "failed":
                frames.append(
                    self._report(
                        mid,
                        attempt,
                        i,
                        n,
                        pb.StatusReport.OUTCOME_FAILED,
                        row["error_code"] or _DEVICE_ERROR,
                        row["error_message"],
                        at,
                    )
                )
        return frames

    def _report(
        self,
        message_id: str,
        attempt: int,
        part_index: int,
        part_count: int,
        outcome: pb.StatusReport.Outcome.ValueType,
        error_code: str = "",
        error_message: str = "",
        at: datetime | None = None,
    ) -> pb.DeviceFrame:
        rid = f"{self.journal_id}.{message_id}.{attempt}.{part_index}.{_OUTCOME_LETTER[outcome]}"
        return pb.DeviceFrame(
            report=pb.StatusReport(
                report_id=rid,
                message_id=message_id,
                part_index=part_index,
                part_count=part_count,
                outcome=outcome,
                error_code=error_code,
                error_message=error_message,
                occurred_at=_timestamp(at),
            )
        )

    def _store(self, frames: list[pb.DeviceFrame]) -> list[pb.DeviceFrame]:
        for frame in frames:
            kind = frame.WhichOneof("frame")
            inner = frame.report if kind == "report" else frame.inbound
            message_id = frame.report.message_id if kind == "report" else None
            self._db.execute(
                "INSERT OR IGNORE INTO reports (device, report_id, message_id, frame)"
                " VALUES (?, ?, ?, ?)",
                (self.device, inner.report_id, message_id, frame.SerializeToString()),
            )
        return frames


def _timestamp(at: datetime | None) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(at or datetime.now(UTC))
    return ts


def _digits(number: str) -> str:
    return "".join(c for c in number if c.isdigit())
