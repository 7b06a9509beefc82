"""`zimsend sms bulk --csv FILE`: a spreadsheet of messages, sent in batches.

Why batches of personalized sends rather than one request per row: SPEC's 100 requests a
minute would make a 1,000-row file take ten minutes of 429s; `send-bulk-personalized` takes
up to 100 messages per request. It is atomic, so one bad row would refuse its whole batch:
the server names every bad row (`messages[3].to`), those rows are recorded as failed with the
server's reason, and the rest of the batch is sent again (a new body, so a new Idempotency-Key).
A refusal that names no row (no phone online, rate limit after the SDK's retries) fails that
batch and the next is tried; bad credentials stop everything.

Each request's Idempotency-Key is a hash of its body and a run id (by default, of the file and
the options): running the same command again after an interruption, within the server's 24 h,
gets the messages already queued back instead of sending them twice. `--run-id` sends the same
file again on purpose.

The CSV needs a header row with a `to` column and either a `message` column or `--message
TEMPLATE` (`{column}` placeholders filled from the row); other non-empty columns become the
message's metadata. Rows are numbered by their line in the file.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zimsend.client import AuthenticationError, InvalidRequestError, ZimSend, ZimSendError

from . import api_command
from ._output import Progress, print_json, print_table

__all__ = ["add_bulk"]

_ROW = re.compile(r"^messages\[(\d+)\]")


@dataclass
class Row:
    line: int
    to: str
    message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class Outcome:
    queued: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)

    def fail(self, row: Row, code: str, reason: str) -> None:
        self.failed.append({"line": row.line, "to": row.to, "code": code, "reason": reason})


def add_bulk(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "bulk",
        parents=[parent],
        help="send the messages of a CSV file (progress, then what failed and why)",
    )
    p.add_argument(
        "--csv",
        type=Path,
        required=True,
        metavar="FILE",
        help="header row with `to` and `message` (or use --message)",
    )
    p.add_argument(
        "--message",
        "-m",
        metavar="TEMPLATE",
        help="text for every row; {column} is replaced by the row's value",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=50,
        metavar="N",
        help="messages per request, 1-100 (default 50)",
    )
    p.add_argument("--priority", help="1-5 or urgent, high, normal, low, very_low")
    p.add_argument("--schedule", metavar="TIME", help="RFC 3339 time, at most 30 days ahead")
    p.add_argument("--webhook-url", metavar="URL")
    p.add_argument("--device", dest="device_id", metavar="DEVICE_ID")
    p.add_argument(
        "--run-id",
        metavar="ID",
        help="rows already sent under this id (within 24 h) are not sent again; "
        "default: derived from the file and these options, so running the "
        "same command again resumes instead of resending",
    )
    p.set_defaults(handler=_bulk)


def read_rows(path: Path, template: str | None, outcome: Outcome) -> list[Row]:
    """The rows to send; rows that cannot become a message go straight to `outcome.failed`."""
    rows: list[Row] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        if "to" not in columns:
            raise ValueError(f"{path}: the header row needs a `to` column (has: {columns})")
        if "message" not in columns and not template:
            raise ValueError(f"{path}: no `message` column: add one or give --message TEMPLATE")
        for record in reader:
            values = {
                (k or "").strip(): (v or "").strip()
                for k, v in record.items()
                if isinstance(v, str)
            }
            row = Row(reader.line_num, values.get("to", ""))
            if not any(values.values()):
                continue
            row.metadata = {
                k: v for k, v in values.items() if k not in ("to", "message") and k and v
            }
            try:
                row.message = template.format_map(values) if template else values["message"]
            except (KeyError, ValueError) as exc:
                outcome.fail(row, "INVALID_REQUEST", f"--message template: no column {exc}")
                continue
            if not row.to:
                outcome.fail(row, "INVALID_PHONE_NUMBER", "the `to` column is empty")
                continue
            rows.append(row)
    return rows


@api_command("sms")
def _bulk(client: ZimSend, args: argparse.Namespace) -> int:
    outcome = Outcome()
    try:
        rows = read_rows(args.csv, args.message, outcome)
    except (OSError, ValueError, csv.Error) as exc:
        print(f"zimsend sms bulk: {exc}", file=sys.stderr)
        return 2
    size = max(1, min(args.batch_size, 100))
    run_id = args.run_id or _default_run_id(args)
    total = len(rows) + len(outcome.failed)
    progress = Progress(total, "sending")
    progress.update(len(outcome.failed), "")
    for start in range(0, len(rows), size):
        batch = rows[start : start + size]
        try:
            _send_batch(client, args, batch, outcome, run_id)
        except AuthenticationError:
            progress.close()
            raise
        progress.update(
            len(outcome.queued) + len(outcome.failed),
            f"queued {len(outcome.queued)}, failed {len(outcome.failed)}",
        )
    progress.close()
    _summary(args, total, outcome)
    return 1 if outcome.failed else 0


def _default_run_id(args: argparse.Namespace) -> str:
    """The file's bytes and every option that shapes the requests."""
    digest = hashlib.sha256(args.csv.read_bytes())
    options = [args.message, args.priority, args.schedule, args.webhook_url, args.device_id]
    digest.update(json.dumps(options).encode())
    return digest.hexdigest()[:32]


def _batch_key(run_id: str, messages: list[dict[str, Any]]) -> str:
    body = json.dumps(messages, sort_keys=True, ensure_ascii=False).encode()
    return "bulk-" + hashlib.sha256(run_id.encode() + b"\0" + body).hexdigest()[:40]


def _send_batch(
    client: ZimSend, args: argparse.Namespace, batch: list[Row], outcome: Outcome, run_id: str
) -> None:
    from ._sms import priority_arg

    while batch:
        messages = [
            {"to": r.to, "message": r.message, "metadata": r.metadata or None} for r in batch
        ]
        try:
            result = client.sms.send_personalized(
                messages,
                priority=priority_arg(args.priority),
                webhook_url=args.webhook_url,
                scheduled_at=args.schedule,
                device_id=args.device_id,
                idempotency_key=_batch_key(run_id, messages),
            )
        except InvalidRequestError as exc:
            bad = _bad_rows(exc, len(batch))
            if not bad:
                for row in batch:
                    outcome.fail(row, exc.code, exc.message)
                return
            for index, reason in sorted(bad.items()):
                outcome.fail(batch[index], _code(exc, reason), reason)
            batch = [row for i, row in enumerate(batch) if i not in bad]
            continue
        except AuthenticationError:
            raise
        except ZimSendError as exc:
            for row in batch:
                outcome.fail(row, exc.code, exc.message)
            return
        outcome.batches.append(result.batch_id)
        for row, message in zip(batch, result.messages, strict=False):
            outcome.queued.append(
                {"line": row.line, "to": message.to, "message_id": message.message_id}
            )
        return


def _bad_rows(exc: ZimSendError, count: int) -> dict[int, str]:
    """Index in the batch → every reason the server gave for that row."""
    bad: dict[int, list[str]] = {}
    for violation in exc.violations:
        match = _ROW.match(violation.field)
        if match and int(match.group(1)) < count:
            bad.setdefault(int(match.group(1)), []).append(
                f"{violation.field.split('.', 1)[-1]}: {violation.description}"
            )
    return {i: "; ".join(reasons) for i, reasons in bad.items()}


def _code(exc: ZimSendError, reason: str) -> str:
    """The row's own code when the batch failed for several reasons."""
    if len(exc.violations) == 1:
        return exc.code
    if reason.startswith("to:"):
        return "INVALID_PHONE_NUMBER"
    if reason.startswith("message:") and "1600" in reason:
        return "MESSAGE_TOO_LONG"
    return "INVALID_REQUEST"


def _summary(args: argparse.Namespace, total: int, outcome: Outcome) -> None:
    if args.json:
        print_json(
            {
                "total": total,
                "queued": len(outcome.queued),
                "failed": len(outcome.failed),
                "batches": outcome.batches,
                "messages": outcome.queued,
                "failures": outcome.failed,
            }
        )
        return
    print(
        f"{total} rows: {len(outcome.queued)} queued, {len(outcome.failed)} failed"
        + (f" (batches: {', '.join(outcome.batches)})" if outcome.batches else "")
    )
    if outcome.failed:
        print()
        print_table(
            ["line", "to", "code", "reason"],
            [
                [f["line"], f["to"], f["code"], f["reason"]]
                for f in sorted(outcome.failed, key=lambda f: f["line"])
            ],
        )
