"""The pairing URI a server shows when a device is added (QR code or text).

Format: `zimsend://pair?server=HOST:PORT&client_id=…&device_id=…&password=…&tls=0|1`.
Parsed with `urllib.parse` (so percent-encoding works); unknown parameters are ignored so a
newer server can add some. The password is kept out of `repr()` so it never reaches a log.
`pairing_qr_text` draws a URI as a QR code for a terminal, so whatever shows a pairing (the
admin CLI, `zimsend up`) shows the same scannable code.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode, urlsplit

__all__ = [
    "PairingError",
    "PairingInfo",
    "format_pairing_uri",
    "pairing_qr_text",
    "parse_pairing_uri",
]

_REQUIRED = ("server", "client_id", "device_id", "password")


class PairingError(ValueError):
    """The pairing URI is malformed; the message says which part."""


@dataclass(frozen=True)
class PairingInfo:
    """What a phone needs to connect: where, who, and the secret."""

    server: str
    client_id: str
    device_id: str
    password: str = field(repr=False)
    tls: bool = False


def parse_pairing_uri(uri: str) -> PairingInfo:
    """Parse a `zimsend://pair?...` URI; raise PairingError naming what is wrong."""
    parts = urlsplit(uri.strip())
    if parts.scheme != "zimsend":
        raise PairingError(f"pairing URI must start with zimsend://, got {parts.scheme!r}")
    if (parts.netloc or parts.path.strip("/")) != "pair":
        raise PairingError("pairing URI must be zimsend://pair?...")
    query = parse_qs(parts.query, keep_blank_values=True)
    values: dict[str, str] = {}
    for name in _REQUIRED:
        got = query.get(name, [""])
        if len(got) != 1 or not got[0]:
            raise PairingError(f"pairing URI is missing {name}")
        values[name] = got[0]
    tls_text = query.get("tls", ["0"])[-1].lower()
    if tls_text not in ("0", "1", "true", "false", ""):
        raise PairingError(f"pairing URI has tls={tls_text!r}; expected 0 or 1")
    server = values["server"]
    if ":" not in server.rsplit("]", 1)[-1]:
        raise PairingError(f"pairing URI server {server!r} needs a port (HOST:PORT)")
    return PairingInfo(
        server=server,
        client_id=values["client_id"],
        device_id=values["device_id"],
        password=values["password"],
        tls=tls_text in ("1", "true"),
    )


def format_pairing_uri(info: PairingInfo) -> str:
    """The URI for `info` (what a server's "add device" shows); inverse of parse."""
    query = urlencode(
        {
            "server": info.server,
            "client_id": info.client_id,
            "device_id": info.device_id,
            "password": info.password,
            "tls": "1" if info.tls else "0",
        }
    )
    return f"zimsend://pair?{query}"


def pairing_qr_text(uri: str) -> str:
    """`uri` as a QR code drawn in text (Unicode half blocks: two module rows per line, so it
    fits a terminal), with its quiet zone; one line per row pair, ending in a newline.

    Light modules are drawn as blocks and dark ones as spaces, as segno's compact terminal
    output does: on the usual dark terminal that is dark-on-light, the way a scanner expects.
    The text holds the password: print it only where the password itself may be shown.
    """
    import segno  # imported here: the agent itself never draws a QR code

    out = io.StringIO()
    segno.make(uri, micro=False).terminal(out=out, compact=True)
    return out.getvalue()
