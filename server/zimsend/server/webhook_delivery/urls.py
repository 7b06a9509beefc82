"""Checking a webhook URL when it is configured (or given as a message's `webhook_url`).

Two checks happen at two moments, on purpose:

- here, when the URL is accepted: its shape (HTTPS, a host, no credentials) and, when the host
  is an address literal in any spelling (`https://2130706433/`), that address;
- at every delivery (`transport`): the addresses the host *resolves to then*. A name that
  resolves to 10.0.0.1 today may have resolved to a public address at configure time, so the
  configure-time check alone would be worthless against DNS tricks.

`ZIMSEND_WEBHOOKS_ALLOW_INSECURE` (development) allows `http://` and local addresses.
"""

from __future__ import annotations

from typing import Final

import httpx

from .addresses import forbidden_reason, parse_ip_literal

__all__ = ["MAX_URL_LENGTH", "WebhookUrlError", "check_webhook_url"]

MAX_URL_LENGTH: Final = 2048
_LOCAL_NAMES: Final = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class WebhookUrlError(ValueError):
    """A URL that must not be used; the message says why and what is allowed."""


def check_webhook_url(url: str, *, allow_insecure: bool) -> str:
    """Return the URL (stripped) if it may be stored, else raise `WebhookUrlError`."""
    url = url.strip()
    if not url:
        raise WebhookUrlError("url is required: the HTTPS address that receives the events.")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"url is too long ({len(url)} characters, at most {MAX_URL_LENGTH}).")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise WebhookUrlError(f"url is not a valid URL ({exc}).") from None
    allowed_schemes = ("https", "http") if allow_insecure else ("https",)
    if parsed.scheme not in allowed_schemes:
        raise WebhookUrlError(
            "url must use https:// (plain http:// is refused; this server allows it only in "
            "development mode)." if not allow_insecure else "url must use https:// or http://."
        )
    if not parsed.host:
        raise WebhookUrlError("url has no host; use e.g. https://example.com/webhooks.")
    if parsed.userinfo:
        raise WebhookUrlError(
            "url must not contain a user name or password: it is shown in listings and logs. "
            "Check the X-Webhook-Signature header instead."
        )
    if not allow_insecure:
        host_problem = _host_problem(parsed.host)
        if host_problem:
            raise WebhookUrlError(f"url points to {host_problem}; use a public HTTPS address.")
    return url


def _host_problem(host: str) -> str | None:
    name = host.lower().rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return f"{host}, which is this machine"
    literal = parse_ip_literal(host)
    if literal is None:
        return None  # a name: its addresses are checked at every delivery
    return forbidden_reason(literal)
