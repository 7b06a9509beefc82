"""The pairing URI a server shows when a device is added."""

from __future__ import annotations

import pytest

from zimsend.agent.pairing import (
    PairingError,
    PairingInfo,
    format_pairing_uri,
    pairing_qr_text,
    parse_pairing_uri,
)


def test_a_pairing_uri_gives_server_ids_password_and_tls() -> None:
    info = parse_pairing_uri(
        "zimsend://pair?server=sms.example.com:443&client_id=client_ab12&device_id=device_cd34"
        "&password=s3cr%26t%3D&tls=1"
    )
    assert info == PairingInfo("sms.example.com:443", "client_ab12", "device_cd34", "s3cr&t=", True)


def test_tls_defaults_to_off_and_unknown_parameters_are_ignored() -> None:
    info = parse_pairing_uri(
        "zimsend://pair?server=127.0.0.1:50051&client_id=c&device_id=d&password=p&name=Kitchen"
    )
    assert info.tls is False


def test_format_and_parse_round_trip() -> None:
    info = PairingInfo("[::1]:50051", "client_1", "device_2", "p a+s/s", True)
    assert parse_pairing_uri(format_pairing_uri(info)) == info


def test_the_password_never_appears_in_repr() -> None:
    info = parse_pairing_uri("zimsend://pair?server=h:1&client_id=c&device_id=d&password=hunter2")
    assert "hunter2" not in repr(info)


@pytest.mark.parametrize(
    ("uri", "complaint"),
    [
        ("https://pair?server=h:1&client_id=c&device_id=d&password=p", "zimsend://"),
        ("zimsend://other?server=h:1&client_id=c&device_id=d&password=p", "zimsend://pair"),
        ("zimsend://pair?server=h:1&device_id=d&password=p", "client_id"),
        ("zimsend://pair?server=h:1&client_id=c&device_id=d&password=", "password"),
        ("zimsend://pair?server=h&client_id=c&device_id=d&password=p", "port"),
        ("zimsend://pair?server=h:1&client_id=c&device_id=d&password=p&tls=maybe", "tls"),
    ],
)
def test_a_malformed_uri_says_what_is_wrong(uri: str, complaint: str) -> None:
    with pytest.raises(PairingError, match=complaint):
        parse_pairing_uri(uri)


def test_the_terminal_qr_code_reads_back_as_the_uri() -> None:
    """Decoded by a real QR reader (zxing-cpp) from the drawn text, and the same modules as
    segno's own matrix: a percent-encoded password survives the trip."""
    import segno
    from _qr import decode_qr_lines, light_modules, qr_lines

    uri = format_pairing_uri(
        PairingInfo(
            "sms.example.com:8081",
            "client_ab12cd34ef56ab78",
            "device_0123456789abcdef",
            "p&ss=w/rd+%",
            False,
        )
    )
    text = pairing_qr_text(uri)
    lines = qr_lines(text)
    assert lines == text.splitlines()  # nothing but the code
    assert decode_qr_lines(lines) == [uri]
    matrix = segno.make(uri, micro=False).matrix
    border = 4
    drawn = light_modules(lines)[border : border + len(matrix)]
    assert [row[border : border + len(matrix)] for row in drawn] == [
        [not dark for dark in row] for row in matrix
    ]
