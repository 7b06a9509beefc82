"""`zimsend serve` and `zimsend admin …` (registered through the `zimsend.commands` entry
points; the command root lives in zimsend-client so a phone gets `zimsend device` alone).

Admin commands print one JSON object on stdout with the created ids and one-time secrets:
scripts can parse it, and the secrets appear nowhere else (not in logs, not in the database).
On a terminal, `create-device` then draws the pairing URI as a QR code to scan onto the phone
(`--qr` / `--no-qr` force it either way).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zimsend.server.config import Settings

if TYPE_CHECKING:
    from zimsend.server.storage import Database

DEFAULT_DEVICE_ADDRESS = "127.0.0.1:8081"


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None):
        overrides["data_dir"] = Path(args.data_dir)
    if getattr(args, "database_url", None):
        overrides["database_url"] = args.database_url
    return Settings(**overrides)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir", help="state directory (default ./.zimsend or ZIMSEND_DATA_DIR)"
    )
    parser.add_argument("--database-url", help="overrides ZIMSEND_DATABASE_URL")


def register_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser("serve", help="run the gRPC server")
    _common(parser)
    parser.add_argument("--host", help="listen address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="gRPC port (default 50051)")
    parser.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from zimsend.server import app, logs

    settings = _settings(args)
    if args.host:
        settings = settings.model_copy(update={"grpc_host": args.host})
    logs.configure(settings.log_level)
    try:
        app.run(settings, port=args.port)
    except app.ListenError as exc:
        print(f"zimsend serve: {exc}", file=sys.stderr)
        return 1
    return 0


def register_admin(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    admin = commands.add_parser("admin", help="create clients, API keys and devices")
    sub = admin.add_subparsers(dest="admin_command", metavar="ACTION", required=True)

    p = sub.add_parser("create-client", help="create a client (tenant)")
    _common(p)
    p.add_argument("--name", required=True)
    p.set_defaults(handler=_create_client)

    p = sub.add_parser("create-key", help="create an API key (printed once)")
    _common(p)
    p.add_argument("--client-id", required=True)
    p.add_argument("--name", default="default")
    p.add_argument("--test", action="store_true", help="a zs_test_ sandbox key")
    p.set_defaults(handler=_create_key)

    p = sub.add_parser("create-device", help="add a device (password printed once)")
    _common(p)
    p.add_argument("--client-id", required=True)
    p.add_argument("--name", required=True)
    p.add_argument(
        "--server-address",
        default=None,
        help="the phone listener address written into the pairing URI (default: the"
        f" device_link_address setting, else {DEFAULT_DEVICE_ADDRESS})",
    )
    p.add_argument(
        "--tls",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="phones connect with TLS: the URI carries tls=1 (default: the device_link_tls"
        " setting)",
    )
    p.add_argument(
        "--qr",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="after the JSON, draw the pairing URI as a QR code to scan onto the phone "
        "(default: only when stdout is a terminal, so scripts get the JSON alone)",
    )
    p.set_defaults(handler=_create_device)

    p = sub.add_parser("set-rate-limit", help="requests per minute for one client (SPEC §8)")
    _common(p)
    p.add_argument("--client-id", required=True)
    p.add_argument(
        "--per-minute",
        type=int,
        required=True,
        help="the client's limit; 0 means the server default (ZIMSEND_RATE_LIMIT_PER_MINUTE)",
    )
    p.set_defaults(handler=_set_rate_limit)

    p = sub.add_parser("migrate", help="bring the database schema up to date")
    _common(p)
    p.set_defaults(handler=_migrate)


def _open(args: argparse.Namespace) -> tuple[Settings, Database]:
    from zimsend.server.storage import Database

    settings = _settings(args)
    db = Database.from_url(settings.database_url_value)
    db.migrate()
    return settings, db


def _print(data: dict[str, Any]) -> int:
    json.dump(data, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


def _fail(exc: Exception) -> int:
    from zimsend.server.errors import ApiError, reason_name

    if isinstance(exc, ApiError):
        print(f"error: {reason_name(exc.code)}: {exc.message}", file=sys.stderr)
        return 2
    raise exc


def _create_client(args: argparse.Namespace) -> int:
    from zimsend.server import accounts

    _, db = _open(args)
    try:
        client = accounts.create_client(db, args.name)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a one-line error and exit 1
        return _fail(exc)
    return _print({"client_id": client.id, "name": client.name})


def _create_key(args: argparse.Namespace) -> int:
    from zimsend.server import accounts

    settings, db = _open(args)
    try:
        new = accounts.create_api_key(
            db, settings.pepper(), args.client_id, args.name, test=args.test
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes a one-line error and exit 1
        return _fail(exc)
    return _print(
        {
            "client_id": new.key.client_id,
            "key_id": new.key.id,
            "name": new.key.name,
            "api_key": new.secret,
            "test": new.key.test,
        }
    )


def _create_device(args: argparse.Namespace) -> int:
    from zimsend.server import accounts

    settings, db = _open(args)
    address = args.server_address or settings.device_link_address or DEFAULT_DEVICE_ADDRESS
    tls = settings.device_link_tls if args.tls is None else args.tls
    try:
        new = accounts.create_device(
            db,
            settings.pepper(),
            args.client_id,
            args.name,
            server_address=address,
            tls=tls,
        )
    except Exception as exc:  # noqa: BLE001 - any failure becomes a one-line error and exit 1
        return _fail(exc)
    _print(
        {
            "client_id": new.device.client_id,
            "device_id": new.device.id,
            "name": new.device.name,
            "device_password": new.password,
            "pairing_uri": new.pairing_uri,
        }
    )
    show_qr = sys.stdout.isatty() if args.qr is None else args.qr
    if show_qr:
        _print_pairing_qr(new.pairing_uri, address)
    return 0


def _print_pairing_qr(uri: str, server_address: str) -> None:
    """The QR code goes to stdout, next to the password it contains (shown once, never
    logged); the loopback warning goes to stderr and holds no secret."""
    from zimsend.agent.pairing import pairing_qr_text

    qr_text = pairing_qr_text(uri)
    try:
        qr_text.encode(sys.stdout.encoding or "ascii")
    except UnicodeEncodeError:
        print(
            f"note: no QR code: this terminal's encoding ({sys.stdout.encoding}) cannot draw "
            "it; use the pairing URI above",
            file=sys.stderr,
        )
        return
    sys.stdout.write(
        "\nScan this on the phone (or give the URI to `zimsend device run --pairing`):\n"
    )
    sys.stdout.write(qr_text)
    sys.stdout.write(f"pairing URI: {uri}\n")
    sys.stdout.flush()
    host = server_address.rsplit(":", 1)[0].strip("[]")
    if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
        print(
            f"note: the URI names {server_address}, which a phone cannot reach; pass "
            "--server-address HOST:PORT with the address of this machine's phone port "
            "as the phone sees it",
            file=sys.stderr,
        )


def _set_rate_limit(args: argparse.Namespace) -> int:
    from zimsend.server import accounts

    _, db = _open(args)
    try:
        client = accounts.set_rate_limit(db, args.client_id, args.per_minute)
    except Exception as exc:  # noqa: BLE001 - any failure becomes a one-line error and exit 1
        return _fail(exc)
    return _print({"client_id": client.id, "rate_limit_per_minute": client.rate_limit_per_minute})


def _migrate(args: argparse.Namespace) -> int:
    _open(args)
    return _print({"migrated": True})
