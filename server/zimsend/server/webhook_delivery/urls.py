"""Checking a webhook URL when it is configured or given as a message's `webhook_url`.

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
    """A URL that must not be used. `problem` says why and what is allowed, without naming the
    field (a message's own `webhook_url` and an endpoint's `url` share this check);
    `str()` names it `url`."""

    def __init__(self, problem: str) -> None:
        super().__init__(f"url {problem}")
        self.problem = problem


def check_webhook_url(url: str, *, allow_insecure: bool) -> str:
    """Return the URL (stripped) if it may be stored, else raise `WebhookUrlError`.

    The one check for every webhook URL a caller gives: `POST /v1/webhooks/configure` and a
    message's own `webhook_url` at send time (issue 12: the send path had a looser copy that
    accepted private addresses, refused only at delivery)."""
    url = url.strip()
    if not url:
        raise WebhookUrlError("is required: the HTTPS address that receives the events.")
    if len(url) > MAX_URL_LENGTH:
        raise WebhookUrlError(f"must be at most {MAX_URL_LENGTH} characters (got {len(url)}).")
    if any(ch.isspace() or not ch.isprintable() for ch in url):
        raise WebhookUrlError(
            "is not a well-formed URL (it contains spaces or control characters); use e.g. "
            "https://example.com/webhooks."
        )
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError) as exc:
        raise WebhookUrlError(f"is not a valid URL ({exc}).") from None
    allowed_schemes = ("https", "http") if allow_insecure else ("https",)
    if parsed.scheme not in allowed_schemes:
        raise WebhookUrlError(
            "must use HTTPS, e.g. https://example.com/webhooks (plain http:// is accepted only "
            "by a server in development mode)."
            if not allow_insecure
            else "must use https:// or http://."
        )
    if not parsed.host:
        raise WebhookUrlError(
            "is not a well-formed URL: it has no host; use e.g. https://example.com/webhooks."
        )
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        # httpx parses any integer as a port (99999, 0, -1); no receiver can listen there.
        raise WebhookUrlError(f"has port {parsed.port}; a port must be 1-65535.")
    if parsed.userinfo:
        raise WebhookUrlError(
            "must not contain credentials (a user name or password): it is shown in listings "
            "and logs. Check the X-Webhook-Signature header instead."
        )
    if not allow_insecure:
        host_problem = _host_problem(parsed.host)
        if host_problem:
            raise WebhookUrlError(f"points to {host_problem}; use a public HTTPS address.")
    return url


def _host_problem(host: str) -> str | None:
    name = host.lower().rstrip(".")
    if name in _LOCAL_NAMES or name.endswith(".localhost"):
        return f"{host}, which is this machine"
    literal = parse_ip_literal(host)
    if literal is None:
        return None  # a name: its addresses are checked at every delivery
    return forbidden_reason(literal)
