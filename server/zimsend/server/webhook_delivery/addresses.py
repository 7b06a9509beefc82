"""Which IP addresses a webhook may reach, and how a host string becomes an address.

Why this exists: a webhook URL is chosen by a customer, and the worker POSTs to it from inside
the operator's network. Without a check, `https://169.254.169.254/…` (cloud metadata, with its
credentials), `https://10.0.0.5/admin` or `https://localhost:5432/` would let any API user probe
and reach internal services (SSRF). The check must hold against every spelling of an address:

- numeric forms that `inet_aton` (and therefore `getaddrinfo`, curl, browsers) accept:
  `2130706433`, `0x7f000001`, `0177.0.0.1`, `127.1` all mean 127.0.0.1 (`parse_ip_literal`);
- IPv6 forms that carry an IPv4 address: IPv4-mapped `::ffff:a.b.c.d`, 6to4 `2002:AABB:CCDD::/48`,
  NAT64 `64:ff9b::a.b.c.d`. Traffic to them ends at the embedded IPv4 address, so that is what
  is judged (`unwrap`).

Only addresses that are globally routable unicast pass (`forbidden_reason` returns None).
Python's `ipaddress` flags disagree with each other on transition ranges (`::ffff:8.8.8.8` is
both "global" and "reserved"), so the rule is applied to the unwrapped address and checks every
flag rather than trusting one.
"""

from __future__ import annotations

import ipaddress
from typing import Final

__all__ = ["IPAddress", "forbidden_reason", "parse_ip_literal", "unwrap"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")
# Cloud metadata endpoints. Each already falls in a refused range (link-local, ULA, shared
# address space); they are named so the refusal says what was avoided.
_METADATA: Final = frozenset(
    ipaddress.ip_address(a)
    for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200", "169.254.170.2")
)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a host string denotes without DNS, or None when it is a name.

    Accepts what `inet_aton` accepts for IPv4 (one to four parts, each decimal, octal with a
    leading 0, or hex with 0x: `2130706433`, `0x7f.1`, `0177.0.0.1`) and any IPv6 literal, with
    or without brackets. A trailing dot (`127.0.0.1.`) is ignored, as resolvers do.
    """
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1]
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])  # drop a zone id
        except ValueError:
            return None
    return _inet_aton(text)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        value = _aton_number(part)
        if value is None:
            return None
        numbers.append(value)
    # The last part fills all the remaining bytes: a.b.c.d, a.b.cd, a.bcd, abcd.
    *head, last = numbers
    if any(n > 0xFF for n in head) or last >= 1 << (8 * (4 - len(head))):
        return None
    value = 0
    for n in head:
        value = value << 8 | n
    value = value << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(value)


def _aton_number(part: str) -> int | None:
    lowered = part.lower()
    try:
        if lowered.startswith("0x"):
            return int(lowered[2:], 16) if lowered[2:] else None
        if len(lowered) > 1 and lowered.startswith("0"):
            return int(lowered[1:], 8)
        if lowered.isdigit():
            return int(lowered, 10)
    except ValueError:
        return None
    return None


def unwrap(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 transition form delivers to; other addresses unchanged."""
    if isinstance(address, ipaddress.IPv4Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address in _SIX_TO_FOUR:
        assert address.sixtofour is not None
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def forbidden_reason(address: IPAddress) -> str | None:
    """Why a webhook must not connect to `address` (judged after `unwrap`), or None if allowed.

    The reason names the range, never anything secret: it ends up in the webhook logs.
    """
    target = unwrap(address)
    shown = str(address) if target == address else f"{address} (= {target})"
    if target in _METADATA:
        return f"{shown} is a cloud metadata address"
    checks = (
        ("unspecified", target.is_unspecified),
        ("loopback", target.is_loopback),
        ("link-local", target.is_link_local),
        ("multicast", target.is_multicast),
        ("private", target.is_private),
        ("reserved", target.is_reserved),
        ("site-local", isinstance(target, ipaddress.IPv6Address) and target.is_site_local),
        ("not globally routable", not target.is_global),
    )
    for name, hit in checks:
        if hit:
            return (
                f"{shown} is a {name} address"
                if name != "not globally routable"
                else (f"{shown} is not a globally routable address")
            )
    return None
