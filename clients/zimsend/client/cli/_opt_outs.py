"""`zimsend opt-outs …`: the numbers that texted STOP (or were added) and must not be sent to
(docs/compliance.md). `list` (or a bare `zimsend opt-outs`), `add NUMBER`, `remove NUMBER`."""

from __future__ import annotations

import argparse
from typing import Any

from zimsend.client import ZimSend

from . import api_command, common
from ._output import print_json, print_table

__all__ = ["add_opt_outs"]


def add_opt_outs(commands: Any) -> None:
    parent = common()
    top = commands.add_parser(
        "opt-outs", parents=[parent], help="numbers that opted out (STOP): list, add, remove"
    )
    top.set_defaults(handler=_list, phone_number=None, limit=50)
    sub = top.add_subparsers(dest="opt_outs_command", metavar="SUBCOMMAND")
    p = sub.add_parser("list", parents=[parent], help="newest first")
    p.add_argument(
        "--number", dest="phone_number", metavar="+33…", help="only this number (is it listed?)"
    )
    p.add_argument("--limit", type=int, default=50, help="at most this many (1-100)")
    p.set_defaults(handler=_list)
    p = sub.add_parser("add", parents=[parent], help="list a number: sends to it are refused")
    p.add_argument("phone_number", metavar="NUMBER", help="international format, e.g. +33612345678")
    p.set_defaults(handler=_add)
    p = sub.add_parser(
        "remove", parents=[parent], help="unlist a number: sends to it are accepted again"
    )
    p.add_argument("phone_number", metavar="NUMBER")
    p.set_defaults(handler=_remove)


@api_command("opt-outs")
def _list(client: ZimSend, args: argparse.Namespace) -> int:
    page = client.opt_outs.list(limit=max(1, min(args.limit, 100)), phone_number=args.phone_number)
    if args.json:
        print_json(list(page.items))
    else:
        print_table(
            ["number", "source", "keyword", "device", "since"],
            [[o.phone_number, o.source, o.keyword, o.device_id, o.created_at] for o in page.items],
            empty="(no opted-out numbers)",
        )
    return 0


@api_command("opt-outs")
def _add(client: ZimSend, args: argparse.Namespace) -> int:
    added = client.opt_outs.add(args.phone_number)
    if args.json:
        print_json(added)
    else:
        state = "added" if added.created else "already listed"
        print(f"{added.opt_out.phone_number} {state}")
    return 0


@api_command("opt-outs")
def _remove(client: ZimSend, args: argparse.Namespace) -> int:
    client.opt_outs.remove(args.phone_number)
    print_json({"phone_number": args.phone_number, "removed": True}) if args.json else print(
        f"{args.phone_number} removed: sends to it are accepted again"
    )
    return 0
