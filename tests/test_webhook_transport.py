"""Webhook URLs cannot reach the operator's network (SPEC §7 "Beyond", DESIGN "Security baseline").

Every private-address case runs with a stubbed resolver and a connector that records what it
was asked to connect to instead of connecting: no test here opens a socket at all, let alone to
an address outside 127.0.0.0/8 or ::1.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
import trio
from _webhooks import RecordingConnector, StubResolver

from zimsend.server.webhook_delivery.addresses import forbidden_reason, parse_ip_literal, unwrap
from zimsend.server.webhook_delivery.sender import WebhookSender
from zimsend.server.webhook_delivery.transport import (
    AddressGuard,
    ForbiddenAddress,
    guarded_transport,
)
from zimsend.server.webhook_delivery.urls import WebhookUrlError, check_webhook_url

PUBLIC_V4 = "93.184.215.14"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"
SECRET = "whsec_" + "A" * 43 + "="


def post(
    url: str, resolver: StubResolver, connector: RecordingConnector, *, allow_private: bool = False
) -> Any:
    """One webhook attempt through the guarded transport, in a fresh trio run."""

    async def main() -> Any:
        transport = guarded_transport(
            allow_private=allow_private, resolver=resolver, connector=connector
        )
        async with WebhookSender(timeout=5, allow_insecure=allow_private, transport=transport) as s:
            return await s.post(url, secret=SECRET, event_id="evt_0123456789abcdef", body=b"{}")

    return trio.run(main)


# --- address rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling",
    [
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "127.1",
        "0x7f.0.0.1",
        "127.0.0.1.",
        "[::ffff:127.0.0.1]",
    ],
)
def test_every_spelling_of_loopback_is_parsed_as_loopback(spelling: str) -> None:
    address = parse_ip_literal(spelling)
    assert address is not None
    assert unwrap(address) == ipaddress.ip_address("127.0.0.1")


@pytest.mark.parametrize(
    "name", ["example.com", "1.2.3.4.5", "08.1.2.3", "0x", "hooks.127.0.0.1.nip"]
)
def test_names_are_not_mistaken_for_addresses(name: str) -> None:
    assert parse_ip_literal(name) is None


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "100.100.100.200",
        "0.0.0.0",
        "224.0.0.1",
        "255.255.255.255",
        "198.18.0.1",
        "192.0.2.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fd00:ec2::254",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "2002:7f00:1::1",
        "2002:a00:1::",
        "64:ff9b::7f00:1",
        "64:ff9b::a9fe:a9fe",
        "::7f00:1",
        "fec0::1",
    ],
)
def test_forbidden_addresses(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize(
    "address",
    [
        PUBLIC_V4,
        "8.8.8.8",
        PUBLIC_V6,
        "::ffff:8.8.8.8",
        "2002:808:808::1",
        "64:ff9b::808:808",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) is None


def test_the_reason_names_the_embedded_address() -> None:
    reason = forbidden_reason(ipaddress.ip_address("::ffff:169.254.169.254"))
    assert reason is not None
    assert "169.254.169.254" in reason
    assert "metadata" in reason


# --- configure-time URL checks ------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://2130706433/",
        "https://0x7f.1/hook",
        "https://10.0.0.1/",
        "https://169.254.169.254/latest/meta-data/",
        "https://[fd00:ec2::254]/",
        "https://localhost/",
        "https://api.localhost/",
        "http://example.com/",
        "ftp://example.com/",
        "https://user:pw@example.com/",
        "https:///path",
        "not a url",
        "",
        "https://example.com:99999/",
        "https://example.com:0/",
    ],
)
def test_refused_urls_when_insecure_is_off(url: str) -> None:
    with pytest.raises(WebhookUrlError):
        check_webhook_url(url, allow_insecure=False)


def test_development_setting_allows_local_http() -> None:
    assert check_webhook_url("http://127.0.0.1:8000/hook", allow_insecure=True)
    with pytest.raises(WebhookUrlError, match="user name"):
        check_webhook_url("http://u:p@127.0.0.1/", allow_insecure=True)


def test_a_public_https_url_is_accepted() -> None:
    assert check_webhook_url(" https://hooks.example.com/zimsend?x=1 ", allow_insecure=False) == (
        "https://hooks.example.com/zimsend?x=1"
    )


# --- delivery-time checks: stub resolver + recording connector -----------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://127.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://2130706433/",
    ],
)
def test_literal_private_urls_are_refused_without_connecting(url: str) -> None:
    resolver, connector = StubResolver({}), RecordingConnector()
    outcome = post(url, resolver, connector)
    assert not outcome.success
    assert outcome.status is None
    assert connector.connects == []
    assert resolver.calls == []


def test_a_name_resolving_to_a_private_address_is_refused() -> None:
    resolver = StubResolver({"internal.example.com": ["10.0.0.1"]})
    connector = RecordingConnector()
    outcome = post("https://internal.example.com/hook", resolver, connector)
    assert not outcome.success
    assert "10.0.0.1" in (outcome.error or "")
    assert "private" in (outcome.error or "")
    assert resolver.calls == ["internal.example.com"]
    assert connector.connects == []


@pytest.mark.parametrize(
    "answer",
    [
        ["::ffff:10.0.0.1"],
        ["2002:a9fe:a9fe::1"],
        ["64:ff9b::a00:1"],
        ["fd00:ec2::254"],
        [PUBLIC_V4, "127.0.0.1"],  # one bad address in the answer spoils it all
    ],
)
def test_wrapped_or_mixed_private_answers_are_refused(answer: list[str]) -> None:
    connector = RecordingConnector()
    outcome = post(
        "https://tricky.example.com/", StubResolver({"tricky.example.com": answer}), connector
    )
    assert not outcome.success
    assert connector.connects == []


def test_connects_to_the_checked_address_and_keeps_the_name_for_tls_and_host() -> None:
    resolver = StubResolver({"hooks.example.com": [PUBLIC_V4]})
    connector = RecordingConnector()
    outcome = post("https://hooks.example.com/zimsend", resolver, connector)
    assert outcome.success
    assert outcome.status == 200
    assert connector.connects == [(PUBLIC_V4, 443)]  # the address, not the name
    assert connector.tls_server_names == ["hooks.example.com"]  # SNI + certificate name
    assert b"\r\nHost: hooks.example.com\r\n" in connector.written
    assert b"POST /zimsend HTTP/1.1" in connector.written


def test_the_name_is_resolved_once_per_connection_no_rebinding() -> None:
    answers = iter([[PUBLIC_V4], ["127.0.0.1"]])  # a rebinding DNS server's two answers
    resolver = StubResolver(lambda host, port: next(answers))
    connector = RecordingConnector()
    outcome = post("https://rebind.example.com/", resolver, connector)
    assert outcome.success
    assert resolver.calls == ["rebind.example.com"]
    assert connector.connects == [(PUBLIC_V4, 443)]


def test_redirects_are_failures_and_are_not_followed() -> None:
    resolver = StubResolver({"hooks.example.com": [PUBLIC_V4]})
    connector = RecordingConnector(
        b"HTTP/1.1 302 Found\r\nLocation: https://10.0.0.1/\r\nContent-Length: 0\r\n\r\n"
    )
    outcome = post("https://hooks.example.com/", resolver, connector)
    assert not outcome.success
    assert outcome.status == 302
    assert "redirect" in (outcome.error or "")
    assert connector.connects == [(PUBLIC_V4, 443)]  # one request only


def test_non_2xx_is_a_failure_with_its_status() -> None:
    connector = RecordingConnector(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
    outcome = post(
        "https://hooks.example.com/", StubResolver({"hooks.example.com": [PUBLIC_V6]}), connector
    )
    assert not outcome.success
    assert outcome.status == 500
    assert connector.connects == [(PUBLIC_V6, 443)]


def test_plain_http_is_refused_unless_insecure() -> None:
    connector = RecordingConnector()
    refused = post(
        "http://hooks.example.com/", StubResolver({"hooks.example.com": [PUBLIC_V4]}), connector
    )
    assert not refused.success
    assert "https" in (refused.error or "")
    assert connector.connects == []


def test_development_setting_connects_to_private_addresses() -> None:
    connector = RecordingConnector()
    outcome = post(
        "http://internal.example.com:8080/",
        StubResolver({"internal.example.com": ["10.0.0.1"]}),
        connector,
        allow_private=True,
    )
    assert outcome.success
    assert connector.connects == [("10.0.0.1", 8080)]


def test_unix_sockets_are_refused() -> None:
    async def main() -> None:
        with pytest.raises(ForbiddenAddress):
            await AddressGuard(connector=RecordingConnector()).connect_unix_socket(
                "/var/run/docker.sock"
            )

    trio.run(main)


def test_every_pool_connects_through_the_guard() -> None:
    # The sender's pools (webhook_delivery/http1.py) open connections only through the guard.
    transport = guarded_transport(resolver=StubResolver({}), connector=RecordingConnector())
    assert isinstance(transport.guard, AddressGuard)
