"""`zimsend sms send|bulk|status|history|export|stats|inbox|cancel|resend`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from zimsend.client import Message, ZimSend

from . import api_command, common
from ._hooks import LOG_HEADERS, log_rows
from ._output import jsonable, print_json, print_record, print_table, when

__all__ = ["add_sms"]


def add_sms(commands: Any) -> None:
    sms = commands.add_parser("sms", help="send SMS and follow them")
    sub = sms.add_subparsers(dest="sms_command", metavar="SUBCOMMAND", required=True)
    parent = common()

    p = sub.add_parser("send", parents=[parent], help="send one SMS")
    p.add_argument("--to", required=True, help="recipient, international format (+33…)")
    p.add_argument("--message", "-m", required=True, help="the text (1-1600 characters)")
    _send_options(p)
    p.add_argument("--sim-slot", type=int, metavar="N")
    p.add_argument("--metadata", metavar="JSON", help="a JSON object returned with its events")
    p.add_argument(
        "--idempotency-key",
        metavar="KEY",
        help="your own key (default: a fresh one, reused by the retries)",
    )
    p.add_argument(
        "--wait", action="store_true", help="wait until delivered or failed (exit 1 if it failed)"
    )
    p.add_argument("--wait-timeout", type=float, default=120.0, metavar="S")
    p.set_defaults(handler=_send)

    from ._bulk import add_bulk

    add_bulk(sub, parent)

    p = sub.add_parser("status", parents=[parent], help="one message's status")
    p.add_argument("message_id")
    p.add_argument("--wait", action="store_true", help="wait until delivered or failed")
    p.add_argument("--wait-timeout", type=float, default=120.0, metavar="S")
    p.add_argument(
        "--webhooks",
        action="store_true",
        help="also its webhook deliveries (one more request; JSON: a 'webhooks' list)",
    )
    p.set_defaults(handler=_status)

    p = sub.add_parser("history", parents=[parent], help="messages, newest first")
    _filters(p)
    p.add_argument("--to", help="only this recipient")
    p.add_argument("--search", help="text in the message")
    p.add_argument("--limit", type=int, default=20, help="how many (default 20)")
    p.add_argument("--all", action="store_true", help="every message of the filter")
    p.set_defaults(handler=_history)

    p = sub.add_parser(
        "export",
        parents=[parent],
        help="the history as CSV or JSON lines, streamed (any date range)",
    )
    _filters(p)
    p.add_argument("--format", choices=["csv", "jsonl"], default="csv")
    p.add_argument("--output", "-o", type=Path, help="file to write (default: stdout)")
    p.set_defaults(handler=_export)

    p = sub.add_parser("stats", parents=[parent], help="counts per day")
    p.add_argument("--from", dest="from_date", metavar="DATE")
    p.add_argument("--until", dest="to_date", metavar="DATE")
    p.add_argument("--device", dest="device_id", metavar="DEVICE_ID")
    p.set_defaults(handler=_stats)

    p = sub.add_parser("inbox", parents=[parent], help="SMS your phones received")
    p.add_argument("--from", dest="from_date", metavar="DATE")
    p.add_argument("--until", dest="to_date", metavar="DATE")
    p.add_argument("--device", dest="device_id", metavar="DEVICE_ID")
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=_inbox)

    p = sub.add_parser("cancel", parents=[parent], help="cancel a queued message")
    p.add_argument("message_id")
    p.set_defaults(handler=_cancel)

    p = sub.add_parser("resend", parents=[parent], help="queue a failed message again")
    p.add_argument("message_id")
    p.set_defaults(handler=_resend)


def _send_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--priority", help="1-5 or urgent, high, normal, low, very_low")
    p.add_argument("--schedule", metavar="TIME", help="RFC 3339 time, at most 30 days ahead")
    p.add_argument("--webhook-url", metavar="URL", help="this message's events go there")
    p.add_argument(
        "--device", dest="device_id", metavar="DEVICE_ID", help="send from this phone (X-Device-ID)"
    )


def _filters(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--status", choices=["queued", "processing", "sent", "delivered", "failed", "cancelled"]
    )
    p.add_argument("--from", dest="from_date", metavar="DATE", help="2025-01-01 or RFC 3339")
    p.add_argument("--until", dest="to_date", metavar="DATE", help="2025-01-31 or RFC 3339")
    p.add_argument("--device", dest="device_id", metavar="DEVICE_ID")


def priority_arg(value: str | None) -> int | str | None:
    return int(value) if value and value.isdigit() else value


def _message_rows(messages: list[Message]) -> list[list[Any]]:
    return [
        [
            m.message_id,
            m.status,
            m.to,
            m.created_at,
            m.device_id,
            m.error.code if m.error else "",
            m.message[:40],
        ]
        for m in messages
    ]


_MESSAGE_HEADERS = ["message id", "status", "to", "created", "device", "error", "text"]


def _show_message(message: Message) -> None:
    print_record(
        [
            ("message id", message.message_id),
            ("status", message.status),
            ("to", message.to),
            ("priority", message.priority),
            ("segments", f"{message.segments} ({message.encoding})"),
            ("device", message.device_id),
            ("created", message.created_at),
            ("scheduled", message.scheduled_at),
            ("sent", message.sent_at),
            ("delivered", message.delivered_at),
            ("failed", message.failed_at),
            ("error", f"{message.error.code}: {message.error.message}" if message.error else ""),
            ("attempts", message.attempts),
            ("text", message.message),
        ]
    )


@api_command("sms")
def _send(client: ZimSend, args: argparse.Namespace) -> int:
    metadata = None
    if args.metadata:
        try:
            metadata = json.loads(args.metadata)
        except ValueError as exc:
            print(f"zimsend sms: --metadata is not JSON: {exc}", file=sys.stderr)
            return 2
    sent = client.sms.send(
        args.to,
        args.message,
        priority=priority_arg(args.priority),
        webhook_url=args.webhook_url,
        metadata=metadata,
        scheduled_at=args.schedule,
        sim_slot=args.sim_slot,
        idempotency_key=args.idempotency_key,
        device_id=args.device_id,
    )
    if not args.wait:
        if args.json:
            print_json(sent)
        else:
            print_record(
                [
                    ("message id", sent.message_id),
                    ("status", sent.status),
                    ("to", sent.to),
                    ("segments", f"{sent.segments} ({sent.encoding})"),
                    ("estimated", sent.estimated_delivery),
                ]
            )
        return 0
    return _waited(client, args, sent.message_id)


def _waited(client: ZimSend, args: argparse.Namespace, message_id: str) -> int:
    try:
        message = client.sms.wait(message_id, timeout=args.wait_timeout)
    except TimeoutError as exc:
        print(f"zimsend sms: {exc}", file=sys.stderr)
        return 1
    print_json(message) if args.json else _show_message(message)
    return 1 if message.status == "failed" else 0


@api_command("sms")
def _status(client: ZimSend, args: argparse.Namespace) -> int:
    if args.wait:
        return _waited(client, args, args.message_id)
    message = client.sms.status(args.message_id)
    if not args.webhooks:
        print_json(message) if args.json else _show_message(message)
        return 0
    logs = list(client.webhooks.logs(message_id=message.message_id, limit=100).items)
    if args.json:
        print_json({**jsonable(message), "webhooks": jsonable(logs)})
    else:
        _show_message(message)
        print()
        print_table(LOG_HEADERS, log_rows(logs), empty="(no webhook deliveries)")
    return 0


@api_command("sms")
def _history(client: ZimSend, args: argparse.Namespace) -> int:
    filters = dict(
        status=args.status,
        to=args.to,
        from_date=args.from_date,
        to_date=args.to_date,
        device_id=args.device_id,
        search=args.search,
    )
    if args.all:
        messages = list(client.sms.iter_history(**filters))
        total = len(messages)
    else:
        page = client.sms.history(limit=max(1, min(args.limit, 100)), **filters)
        messages, total = list(page.items), page.pagination.total_items
    if args.json:
        print_json(messages)
    else:
        print_table(_MESSAGE_HEADERS, _message_rows(messages), empty="(no messages)")
        if total > len(messages):
            print(f"({len(messages)} of {total}; --limit N or --all for more)", file=sys.stderr)
    return 0


@api_command("sms")
def _export(client: ZimSend, args: argparse.Namespace) -> int:
    chunks = client.sms.export(
        format=args.format,
        from_date=args.from_date,
        to_date=args.to_date,
        status=args.status,
        device_id=args.device_id,
    )
    if args.output is None:
        for chunk in chunks:
            sys.stdout.buffer.write(chunk)
        sys.stdout.buffer.flush()
        return 0
    partial = args.output.with_name(args.output.name + ".partial")
    with partial.open("wb") as f:
        for chunk in chunks:  # a truncated export raises before the file is renamed
            f.write(chunk)
    partial.replace(args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


@api_command("sms")
def _stats(client: ZimSend, args: argparse.Namespace) -> int:
    stats = client.sms.stats(
        from_date=args.from_date, to_date=args.to_date, device_id=args.device_id
    )
    if args.json:
        print_json(stats)
        return 0
    print_record(
        [
            ("period", f"{when(stats.period_from)} – {when(stats.period_to)}"),
            ("sent", stats.total_sent),
            ("delivered", stats.delivered),
            ("failed", stats.failed),
            ("pending", stats.pending),
            ("delivery rate", f"{stats.delivery_rate:.1f} %"),
        ]
    )
    print()
    print_table(
        ["date", "sent", "delivered", "failed"],
        [[d.date, d.sent, d.delivered, d.failed] for d in stats.by_day],
    )
    return 0


@api_command("sms")
def _inbox(client: ZimSend, args: argparse.Namespace) -> int:
    page = client.sms.inbox(
        limit=max(1, min(args.limit, 100)),
        from_date=args.from_date,
        to_date=args.to_date,
        device_id=args.device_id,
    )
    if args.json:
        print_json(list(page.items))
    else:
        print_table(
            ["received", "from", "device", "text"],
            [[m.received_at, m.from_, m.device_id, m.message] for m in page.items],
            empty="(no SMS received)",
        )
    return 0


@api_command("sms")
def _cancel(client: ZimSend, args: argparse.Namespace) -> int:
    done = client.sms.cancel(args.message_id)
    print_json(done) if args.json else print(f"{done.message_id} {done.status}")
    return 0


@api_command("sms")
def _resend(client: ZimSend, args: argparse.Namespace) -> int:
    done = client.sms.resend(args.message_id)
    print_json(done) if args.json else print(
        f"{done.message_id} {done.status} (attempt {done.attempts})"
    )
    return 0
