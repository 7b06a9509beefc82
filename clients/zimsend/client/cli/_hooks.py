"""`zimsend webhooks …` and `zimsend events tail` (the delivery logs, followed)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from zimsend.client import WebhookLog, ZimSend

from . import api_command, common
from ._output import jsonable, print_json, print_table, when

__all__ = ["LOG_HEADERS", "add_events", "add_webhooks", "log_rows"]

EVENTS = (
    "sms.sent",
    "sms.delivered",
    "sms.failed",
    "sms.received",
    "device.connected",
    "device.disconnected",
    "otp.verified",
    "sms.opted_out",
    "sms.opted_in",
)


def add_webhooks(commands: Any) -> None:
    parent = common()
    hooks = commands.add_parser(
        "webhooks", parents=[parent], help="webhook endpoints: list, add, test, logs, remove"
    )
    hooks.set_defaults(handler=_list)
    sub = hooks.add_subparsers(dest="webhooks_command", metavar="SUBCOMMAND")
    p = sub.add_parser("list", parents=[parent], help="every endpoint")
    p.set_defaults(handler=_list)
    p = sub.add_parser("add", parents=[parent], help="a new endpoint; its secret is shown once")
    p.add_argument("url", help="HTTPS URL that receives the events")
    p.add_argument(
        "--events",
        default=",".join(EVENTS),
        metavar="E1,E2",
        help=f"comma-separated (default: all of {', '.join(EVENTS)})",
    )
    p.add_argument("--secret", help="your own secret (16-256 characters; default: generated)")
    p.set_defaults(handler=_add)
    p = sub.add_parser("test", parents=[parent], help="send a webhook.test event to it")
    p.add_argument("webhook_id")
    p.set_defaults(handler=_test)
    p = sub.add_parser("logs", parents=[parent], help="delivery attempts, newest first")
    p.add_argument("--webhook", dest="webhook_id", metavar="WEBHOOK_ID")
    p.add_argument("--event", dest="event_id", metavar="EVENT_ID")
    p.add_argument(
        "--message",
        dest="message_id",
        metavar="MESSAGE_ID",
        help="only the deliveries of that message's events (sms.sent, ...)",
    )
    p.add_argument("--limit", type=int, default=20)
    p.set_defaults(handler=_logs)
    p = sub.add_parser("redeliver", parents=[parent], help="queue a failed event again")
    p.add_argument("event_id")
    p.set_defaults(handler=_redeliver)
    p = sub.add_parser("remove", parents=[parent], help="delete an endpoint")
    p.add_argument("webhook_id")
    p.set_defaults(handler=_remove)


@api_command("webhooks")
def _list(client: ZimSend, args: argparse.Namespace) -> int:
    hooks = client.webhooks.list()
    if args.json:
        print_json(hooks)
    else:
        print_table(
            ["webhook id", "url", "events", "status", "created"],
            [[h.webhook_id, h.url, h.events, h.status, h.created_at] for h in hooks],
            empty="(no webhooks: `zimsend webhooks add URL`)",
        )
    return 0


@api_command("webhooks")
def _add(client: ZimSend, args: argparse.Namespace) -> int:
    events = [e.strip() for e in args.events.split(",") if e.strip()]
    made = client.webhooks.configure(args.url, events, secret=args.secret)
    if args.json:
        print_json(made)
    else:
        print(f"webhook id  {made.webhook_id} ({made.status})")
        print(f"url         {made.url}")
        print(f"events      {', '.join(made.events)}")
        print(f"secret      {made.secret}")
        print("The secret is shown this once: your receiver needs it to verify signatures.")
    return 0


@api_command("webhooks")
def _test(client: ZimSend, args: argparse.Namespace) -> int:
    done = client.webhooks.test(args.webhook_id)
    print_json(done) if args.json else print(f"{done.event_id}: {done.message}")
    return 0


def log_rows(logs: list[WebhookLog]) -> list[list[Any]]:
    return [
        [
            log.timestamp,
            log.event,
            log.event_id,
            log.message_id or "-",
            log.attempt,
            "ok" if log.success else "FAILED",
            log.response_status or "-",
            f"{log.response_time_ms} ms",
            log.url,
            log.error,
        ]
        for log in logs
    ]


LOG_HEADERS = [
    "time",
    "event",
    "event id",
    "message id",
    "try",
    "result",
    "http",
    "took",
    "url",
    "error",
]


@api_command("webhooks")
def _logs(client: ZimSend, args: argparse.Namespace) -> int:
    page = client.webhooks.logs(
        limit=max(1, min(args.limit, 100)),
        webhook_id=args.webhook_id,
        event_id=args.event_id,
        message_id=args.message_id,
    )
    if args.json:
        print_json(list(page.items))
    else:
        print_table(LOG_HEADERS, log_rows(list(page.items)), empty="(no deliveries yet)")
    return 0


@api_command("webhooks")
def _redeliver(client: ZimSend, args: argparse.Namespace) -> int:
    client.webhooks.redeliver(args.event_id)
    print_json({"event_id": args.event_id, "queued": True}) if args.json else print(
        f"{args.event_id} queued again"
    )
    return 0


@api_command("webhooks")
def _remove(client: ZimSend, args: argparse.Namespace) -> int:
    client.webhooks.delete(args.webhook_id)
    print_json({"webhook_id": args.webhook_id, "deleted": True}) if args.json else print(
        f"{args.webhook_id} deleted"
    )
    return 0


# --- events tail ----------------------------------------------------------------------------


def add_events(commands: Any) -> None:
    events = commands.add_parser("events", help="follow what ZimSend tells your webhooks")
    sub = events.add_subparsers(dest="events_command", metavar="SUBCOMMAND", required=True)
    p = sub.add_parser(
        "tail",
        parents=[common()],
        help="print webhook deliveries as they happen (the delivery logs)",
    )
    p.add_argument("--webhook", dest="webhook_id", metavar="WEBHOOK_ID")
    p.add_argument(
        "--lines",
        "-n",
        type=int,
        default=10,
        metavar="N",
        help="recent deliveries to print first (default 10)",
    )
    p.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="S",
        help="seconds between two looks (default 2; each is one request)",
    )
    p.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="stop after N new deliveries (default: run until Ctrl-C)",
    )
    p.set_defaults(handler=_tail)


def _key(log: WebhookLog) -> tuple[Any, ...]:
    return (log.event_id, log.webhook_id, log.attempt, log.timestamp)


@api_command("events")
def _tail(client: ZimSend, args: argparse.Namespace) -> int:
    """Poll the newest page of the logs and print what was not printed yet, oldest first.
    One line per attempt (JSON lines with --json)."""
    seen: set[tuple[Any, ...]] = set()
    first, new = True, 0
    while True:
        logs = list(client.webhooks.logs(limit=100, webhook_id=args.webhook_id).items)
        fresh = [log for log in reversed(logs) if _key(log) not in seen]
        seen.update(_key(log) for log in fresh)
        if first:
            fresh = fresh[-args.lines :] if args.lines > 0 else []
            first = False
        else:
            new += len(fresh)
        for log in fresh:
            if args.json:
                sys.stdout.write(json.dumps(jsonable(log), ensure_ascii=False) + "\n")
            else:
                sys.stdout.write(
                    f"{when(log.timestamp)}  {log.event:<19} {log.event_id}  try {log.attempt}  "
                    f"{'ok' if log.success else 'FAILED'} {log.response_status or '-'}  "
                    f"{log.response_time_ms} ms  {log.url}"
                    + (f"  {log.error}" if log.error else "")
                    + "\n"
                )
        sys.stdout.flush()
        if args.count and new >= args.count:
            return 0
        time.sleep(max(0.2, args.interval))
