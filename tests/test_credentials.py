"""Identifiers and credentials: formats, entropy, checksums, hashing and encryption at rest."""

from __future__ import annotations

import base64
import re

import pytest

from zimsend.server.accounts import credentials

PEPPER = b"pepper-for-tests-0123456789abcdef"


@pytest.mark.parametrize("prefix", ["msg", "otp", "batch", "evt", "wh", "device", "client", "key"])
def test_ids_are_prefix_and_16_hex(prefix: str) -> None:
    value = credentials.new_id(prefix)  # type: ignore[arg-type]  # a str from parametrize
    assert re.fullmatch(rf"{prefix}_[0-9a-f]{{16}}", value)


def test_ids_do_not_repeat_and_unknown_prefixes_are_refused() -> None:
    assert len({credentials.new_id("msg") for _ in range(1000)}) == 1000
    with pytest.raises(ValueError, match="unknown identifier prefix 'sms'"):
        credentials.new_id("sms")  # type: ignore[arg-type]  # not an IdPrefix, on purpose


@pytest.mark.parametrize(("test", "prefix"), [(False, "zs_live_"), (True, "zs_test_")])
def test_api_keys_carry_mode_prefix_and_a_valid_checksum(test: bool, prefix: str) -> None:
    key = credentials.new_api_key(test=test)
    assert key.startswith(prefix)
    assert re.fullmatch(r"zs_(live|test)_[0-9A-Za-z]{38}", key)  # 32 random + 6 checksum
    assert credentials.is_well_formed_api_key(key)
    assert credentials.api_key_last4(key) == key[-4:]


def test_a_mistyped_or_invented_api_key_fails_the_checksum() -> None:
    key = credentials.new_api_key()
    flipped = key[:12] + ("A" if key[12] != "A" else "B") + key[13:]
    assert not credentials.is_well_formed_api_key(flipped)
    assert not credentials.is_well_formed_api_key(key.replace("zs_live_", "zs_test_"))
    assert not credentials.is_well_formed_api_key("zs_live_" + "a" * 38)
    assert not credentials.is_well_formed_api_key(key[:-1])
    assert not credentials.is_well_formed_api_key("")


def test_device_passwords_and_webhook_secrets_have_at_least_128_bits() -> None:
    password = credentials.new_device_password()
    assert re.fullmatch(r"[0-9A-Za-z]{24}", password)
    webhook = credentials.new_webhook_secret()
    assert webhook.startswith("whsec_")
    assert len(base64.b64decode(webhook.removeprefix("whsec_"))) == 32


@pytest.mark.parametrize("length", [4, 6, 8])
def test_otp_codes_are_digits_of_the_asked_length(length: int) -> None:
    codes = {credentials.new_otp_code(length) for _ in range(200)}
    assert all(len(c) == length and c.isdigit() for c in codes)
    assert len(codes) > 150  # random, not a counter


@pytest.mark.parametrize("length", [3, 9])
def test_otp_code_length_is_4_to_8(length: int) -> None:
    with pytest.raises(ValueError, match="4 to 8 digits"):
        credentials.new_otp_code(length)


def test_hash_and_verify_depend_on_the_pepper() -> None:
    stored = credentials.hash_secret(PEPPER, "zs_live_x")
    assert re.fullmatch(r"[0-9a-f]{64}", stored)
    assert credentials.verify_secret(PEPPER, "zs_live_x", stored)
    assert not credentials.verify_secret(PEPPER, "zs_live_y", stored)
    assert not credentials.verify_secret(b"another-pepper-0123456789", "zs_live_x", stored)


def test_encrypted_secrets_read_back_only_with_the_same_pepper_and_row() -> None:
    token = credentials.encrypt_secret(PEPPER, "whsec_abc", bound_to="wh_1")
    assert "whsec_abc" not in token
    assert token.startswith("v1.")
    assert token != credentials.encrypt_secret(PEPPER, "whsec_abc", bound_to="wh_1")  # fresh nonce
    assert credentials.decrypt_secret(PEPPER, token, bound_to="wh_1") == "whsec_abc"
    with pytest.raises(ValueError, match="cannot decrypt secret"):
        credentials.decrypt_secret(PEPPER, token, bound_to="wh_2")
    with pytest.raises(ValueError, match="cannot decrypt secret"):
        credentials.decrypt_secret(b"another-pepper-0123456789", token, bound_to="wh_1")
    with pytest.raises(ValueError, match="cannot decrypt secret"):
        credentials.decrypt_secret(PEPPER, "v1.!!!", bound_to="wh_1")
