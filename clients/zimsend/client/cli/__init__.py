"""The `zimsend` commands for people who use ZimSend (docs/cli.md): `login`, `sms`, `devices`,
`keys`, `webhooks`, `events`, `opt-outs`. Each is registered through the `zimsend.commands`
entry-point group (clients/pyproject.toml) like `device`, and each is a thin layer over the
blocking SDK (`zimsend.client.ZimSend`): short-lived commands doing one thing at a time need no
event loop.

Exit codes: 0 done, 1 the API refused (the SPEC code and message on stderr) or some rows of a
bulk send failed, 2 bad arguments or no credentials, 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "register_devices",
    "register_events",
    "register_keys",
    "register_login",
    "register_opt_outs",
    "register_sms",
    "register_webhooks",
]

Handler = Callable[[argparse.Namespace], int]


def common() -> argparse.ArgumentParser:
    """Options every user command takes."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    parent.add_argument(
        "--profile",
        metavar="NAME",
        help="profile of `zimsend login` (default: $ZIMSEND_PROFILE, else the default profile)",
    )
    parent.add_argument(
        "--transport",
        choices=["rest", "grpc"],
        default="rest",
        help="how to reach ZimSend (default: rest)",
    )
    parent.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        metavar="S",
        help="seconds per request attempt (default 30)",
    )
    return parent


def api_command(command: str) -> Callable[[Callable[..., int]], Handler]:
    """Give the handler a connected `ZimSend` and turn failures into messages and codes."""

    def wrap(handler: Callable[..., int]) -> Handler:
        @functools.wraps(handler)
        def run(args: argparse.Namespace) -> int:
            from zimsend.client import ZimSend, ZimSendError

            from ._profile import ProfileError, load_profile

            try:
                profile = load_profile(args.profile)
            except ProfileError as exc:
                print(f"zimsend {command}: {exc}", file=sys.stderr)
                return 2
            try:
                with ZimSend(
                    api_key=profile.api_key,
                    client_id=profile.client_id,
                    base_url=profile.base_url,
                    transport=args.transport,
                    timeout=args.timeout,
                ) as client:
                    return handler(client, args)
            except ZimSendError as exc:
                fail(command, exc)
                return 1

        return run

    return wrap


def fail(command: str, exc: Any) -> None:
    """`zimsend sms: INVALID_PHONE_NUMBER: …` and each bad field, on stderr."""
    print(f"zimsend {command}: {exc.code}: {exc.message}", file=sys.stderr)
    for violation in getattr(exc, "violations", ()):
        print(f"  {violation.field}: {violation.description}", file=sys.stderr)


def register_login(commands: Any) -> None:
    from ._account import add_login

    add_login(commands)


def register_sms(commands: Any) -> None:
    from ._sms import add_sms

    add_sms(commands)


def register_devices(commands: Any) -> None:
    from ._account import add_devices

    add_devices(commands)


def register_keys(commands: Any) -> None:
    from ._account import add_keys

    add_keys(commands)


def register_webhooks(commands: Any) -> None:
    from ._hooks import add_webhooks

    add_webhooks(commands)


def register_events(commands: Any) -> None:
    from ._hooks import add_events

    add_events(commands)


def register_opt_outs(commands: Any) -> None:
    from ._opt_outs import add_opt_outs

    add_opt_outs(commands)
