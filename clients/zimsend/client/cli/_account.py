"""`zimsend login`, `zimsend devices …`, `zimsend keys …`."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path
from typing import Any

from zimsend.client import Device, ZimSend, ZimSendError

from . import api_command, common, fail
from ._output import print_json, print_record, print_table

__all__ = ["add_devices", "add_keys", "add_login"]


# --- login ----------------------------------------------------------------------------------


def add_login(commands: Any) -> None:
    p = commands.add_parser(
        "login", help="save the base URL, client id and API key the other commands use"
    )
    p.add_argument("--base-url", metavar="URL", help="REST root, e.g. http://127.0.0.1:8080")
    p.add_argument("--client-id")
    p.add_argument("--api-key", help="(visible in `ps`; prefer the prompt or --api-key-stdin)")
    p.add_argument("--api-key-stdin", action="store_true", help="read the API key from stdin")
    p.add_argument(
        "--credentials",
        type=Path,
        metavar="FILE",
        help="take client id and key from `zimsend up`'s credentials.json",
    )
    p.add_argument("--profile", default=None, metavar="NAME", help="profile name (default)")
    p.add_argument("--no-verify", action="store_true", help="save without calling auth/test")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=_login)


def _login(args: argparse.Namespace) -> int:
    from zimsend.client._rest import normalize_base_url

    from ._profile import Profile, config_path, save_profile

    values = {"base_url": args.base_url, "client_id": args.client_id, "api_key": args.api_key}
    if args.credentials:
        try:
            creds = json.loads(args.credentials.read_text())
        except (OSError, ValueError) as exc:
            print(f"zimsend login: cannot read {args.credentials}: {exc}", file=sys.stderr)
            return 2
        values["client_id"] = values["client_id"] or creds.get("client_id")
        values["api_key"] = values["api_key"] or creds.get("api_key")
    if args.api_key_stdin:
        values["api_key"] = sys.stdin.readline().strip()
    interactive = sys.stdin.isatty()
    for name, prompt in (
        ("base_url", "Base URL [http://127.0.0.1:8080]: "),
        ("client_id", "Client ID: "),
        ("api_key", "API key: "),
    ):
        if not values[name] and interactive:
            values[name] = getpass.getpass(prompt) if name == "api_key" else input(prompt)
            values[name] = values[name].strip()
    values["base_url"] = normalize_base_url(values["base_url"] or "http://127.0.0.1:8080")
    missing = [f"--{n.replace('_', '-')}" for n in ("client_id", "api_key") if not values[n]]
    if missing:
        print(f"zimsend login: missing {', '.join(missing)}", file=sys.stderr)
        return 2
    name = args.profile or "default"
    profile = Profile(name, values["base_url"], values["client_id"], values["api_key"])
    if not args.no_verify:
        try:
            with ZimSend(
                api_key=profile.api_key,
                client_id=profile.client_id,
                base_url=profile.base_url,
                retries=1,
                timeout=15,
            ) as client:
                client.auth_test()
        except ZimSendError as exc:
            fail("login", exc)
            print(
                f"  nothing saved; check the values (base URL {profile.base_url})", file=sys.stderr
            )
            return 1
    path = save_profile(profile, make_default=args.profile is None or not config_path().exists())
    if args.json:
        print_json(
            {
                "profile": name,
                "base_url": profile.base_url,
                "client_id": profile.client_id,
                "config": str(path),
            }
        )
    else:
        print(
            f"Logged in to {profile.base_url} as {profile.client_id} "
            f"(profile {name}; saved in {path}, mode 600)"
        )
    return 0


# --- devices --------------------------------------------------------------------------------


def add_devices(commands: Any) -> None:
    parent = common()
    devices = commands.add_parser(
        "devices", parents=[parent], help="your phones: list, add (pairing QR code), settings"
    )
    devices.set_defaults(handler=_devices_list)
    sub = devices.add_subparsers(dest="devices_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", parents=[parent], help="every device, online or not")
    p.set_defaults(handler=_devices_list)

    p = sub.add_parser(
        "add",
        parents=[parent],
        help="add a device: prints its pairing URI and QR code (shown once)",
    )
    p.add_argument("name")
    p.add_argument(
        "--qr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw the pairing QR code (default: yes)",
    )
    p.set_defaults(handler=_devices_add)

    p = sub.add_parser("show", parents=[parent], help="one device")
    p.add_argument("device_id")
    p.set_defaults(handler=_devices_show)

    p = sub.add_parser("set", parents=[parent], help="change a device's settings (live)")
    p.add_argument("device_id")
    p.add_argument("--name")
    p.add_argument("--enabled", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument(
        "--send-interval-ms", type=int, metavar="MS", help="pause between two SMS of this phone"
    )
    p.add_argument("--daily-cap", type=int, metavar="N", help="SMS a day at most (0: none)")
    p.set_defaults(handler=_devices_set)

    p = sub.add_parser("remove", parents=[parent], help="delete a device")
    p.add_argument("device_id")
    p.set_defaults(handler=_devices_remove)

    p = sub.add_parser(
        "rotate-password",
        parents=[parent],
        help="new device password and pairing QR code; the old one stops",
    )
    p.add_argument("device_id")
    p.add_argument("--qr", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(handler=_devices_rotate)


def _device_record(d: Device) -> list[tuple[str, Any]]:
    return [
        ("device id", d.device_id),
        ("name", d.name),
        ("status", d.status),
        ("cannot send", d.cannot_send_reason),
        ("enabled", d.enabled),
        ("last seen", d.last_seen),
        ("battery", f"{d.battery} %" if d.battery is not None else ""),
        ("signal", d.signal),
        ("network", d.network),
        ("phone number", d.phone_number),
        ("model", d.model),
        ("app version", d.app_version),
        ("send interval", f"{d.send_interval_ms} ms"),
        ("daily cap", d.daily_cap or "none"),
        ("backend", d.capabilities.backend if d.capabilities else ""),
    ]


@api_command("devices")
def _devices_list(client: ZimSend, args: argparse.Namespace) -> int:
    devices = client.devices.list()
    if args.json:
        print_json(devices)
    else:
        print_table(
            [
                "device id",
                "name",
                "status",
                "enabled",
                "last seen",
                "battery",
                "interval ms",
                "daily cap",
            ],
            [
                [
                    d.device_id,
                    d.name,
                    (d.cannot_send_reason and f"{d.status} ({d.cannot_send_reason})") or d.status,
                    d.enabled,
                    d.last_seen,
                    d.battery,
                    d.send_interval_ms,
                    d.daily_cap,
                ]
                for d in devices
            ],
            empty="(no devices: `zimsend devices add NAME`)",
        )
    return 0


def _pairing(uri: str, password: str, show_qr: bool) -> None:
    print("The password and the pairing URI are shown this once.")
    print(f"device password  {password}")
    print(f"pairing URI      {uri}")
    if not show_qr:
        return
    from zimsend.agent.pairing import pairing_qr_text

    qr = pairing_qr_text(uri)
    try:
        qr.encode(sys.stdout.encoding or "ascii")
    except UnicodeEncodeError:
        print(
            f"note: this terminal's encoding ({sys.stdout.encoding}) cannot draw the QR "
            "code; use the pairing URI",
            file=sys.stderr,
        )
        return
    print("\nScan this on the phone (or: zimsend device run --pairing URI):")
    sys.stdout.write(qr)
    sys.stdout.flush()


@api_command("devices")
def _devices_add(client: ZimSend, args: argparse.Namespace) -> int:
    made = client.devices.create(args.name)
    if args.json:
        print_json(made)
        return 0
    print(f"device id        {made.device_id} ({made.name})")
    _pairing(made.pairing_uri, made.device_password, args.qr)
    return 0


@api_command("devices")
def _devices_show(client: ZimSend, args: argparse.Namespace) -> int:
    device = client.devices.get(args.device_id)
    print_json(device) if args.json else print_record(_device_record(device))
    return 0


@api_command("devices")
def _devices_set(client: ZimSend, args: argparse.Namespace) -> int:
    changes = dict(
        name=args.name,
        enabled=args.enabled,
        send_interval_ms=args.send_interval_ms,
        daily_cap=args.daily_cap,
    )
    if all(v is None for v in changes.values()):
        print(
            "zimsend devices set: nothing to change (--name, --enabled/--no-enabled, "
            "--send-interval-ms, --daily-cap)",
            file=sys.stderr,
        )
        return 2
    device = client.devices.update(args.device_id, **changes)
    print_json(device) if args.json else print_record(_device_record(device))
    return 0


@api_command("devices")
def _devices_remove(client: ZimSend, args: argparse.Namespace) -> int:
    client.devices.delete(args.device_id)
    print_json({"device_id": args.device_id, "deleted": True}) if args.json else print(
        f"{args.device_id} deleted"
    )
    return 0


@api_command("devices")
def _devices_rotate(client: ZimSend, args: argparse.Namespace) -> int:
    new = client.devices.rotate_password(args.device_id)
    if args.json:
        print_json(new)
        return 0
    _pairing(new.pairing_uri, new.device_password, args.qr)
    return 0


# --- keys -----------------------------------------------------------------------------------


def add_keys(commands: Any) -> None:
    parent = common()
    keys = commands.add_parser("keys", parents=[parent], help="API keys: list, create, revoke")
    keys.set_defaults(handler=_keys_list)
    sub = keys.add_subparsers(dest="keys_command", metavar="SUBCOMMAND")
    p = sub.add_parser("list", parents=[parent], help="every key (last 4 characters only)")
    p.set_defaults(handler=_keys_list)
    p = sub.add_parser("create", parents=[parent], help="a new key, shown once")
    p.add_argument("name")
    p.add_argument("--test", action="store_true", help="a zs_test_ sandbox key")
    p.set_defaults(handler=_keys_create)
    p = sub.add_parser("revoke", parents=[parent], help="the key fails from its next request")
    p.add_argument("key_id")
    p.set_defaults(handler=_keys_revoke)


@api_command("keys")
def _keys_list(client: ZimSend, args: argparse.Namespace) -> int:
    keys = client.api_keys.list()
    if args.json:
        print_json(keys)
    else:
        print_table(
            ["key id", "name", "key", "test", "created", "last used", "revoked"],
            [
                [
                    k.key_id,
                    k.name,
                    f"…{k.last4}",
                    k.test,
                    k.created_at,
                    k.last_used_at,
                    k.revoked_at,
                ]
                for k in keys
            ],
        )
    return 0


@api_command("keys")
def _keys_create(client: ZimSend, args: argparse.Namespace) -> int:
    made = client.api_keys.create(args.name, test=args.test)
    if args.json:
        print_json(made)
    else:
        print(f"key id   {made.key_id} ({made.name})")
        print(f"API key  {made.api_key}")
        print("Shown this once: store it now.")
    return 0


@api_command("keys")
def _keys_revoke(client: ZimSend, args: argparse.Namespace) -> int:
    client.api_keys.revoke(args.key_id)
    print_json({"key_id": args.key_id, "revoked": True}) if args.json else print(
        f"{args.key_id} revoked"
    )
    return 0
