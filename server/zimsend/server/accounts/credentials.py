"""Identifiers, credentials and the pepper-keyed primitives that protect them at rest.

Everything random comes from the `secrets` CSPRNG. Credentials the server generates (API keys,
device passwords) carry at least 128 bits of entropy, so a plain keyed hash is enough to store
them: there is nothing to brute-force, and no slow password hash is needed. The HMAC key is the
server's pepper (see `zimsend.server.config`), so a leaked database alone verifies nothing.

Webhook signing secrets are the exception: the worker needs the raw secret to sign each
delivery, so it cannot be hashed. It is stored encrypted with AES-256-GCM under a key derived
from the pepper (`encrypt_secret` / `decrypt_secret`), bound to the row it belongs to.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import string
import zlib
from typing import Final, Literal, get_args

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

__all__ = [
    "IdPrefix",
    "api_key_last4",
    "decrypt_secret",
    "encrypt_secret",
    "hash_secret",
    "is_well_formed_api_key",
    "new_api_key",
    "new_device_password",
    "new_id",
    "new_otp_code",
    "new_webhook_secret",
    "verify_secret",
]

IdPrefix = Literal["msg", "otp", "batch", "evt", "wh", "device", "client", "key", "in", "cmd"]
_ID_PREFIXES: Final = frozenset(get_args(IdPrefix))

BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
API_KEY_PREFIXES: Final = ("zs_live_", "zs_test_")
_API_KEY_RANDOM_CHARS: Final = 32  # 32 * log2(62) ~ 190 bits
_CHECKSUM_CHARS: Final = 6  # 62**6 > 2**32: a CRC32 always fits
_DEVICE_PASSWORD_CHARS: Final = 24  # ~143 bits, base62 so it survives being typed by hand
_WEBHOOK_SECRET_BYTES: Final = 32
_SEALED_VERSION: Final = "v1"


def new_id(prefix: IdPrefix) -> str:
    """An opaque, unguessable identifier: `msg_` + 16 hex characters (64 random bits)."""
    if prefix not in _ID_PREFIXES:
        raise ValueError(f"unknown identifier prefix {prefix!r}")
    return f"{prefix}_{secrets.token_hex(8)}"


def new_api_key(*, test: bool = False) -> str:
    """`zs_live_…` / `zs_test_…`: 32 random base62 characters and a 6-character checksum.

    The checksum (CRC32 of everything before it, in base62, as GitHub's tokens do) lets secret
    scanners and our own auth layer reject a mistyped or made-up key without a database lookup.
    """
    body = API_KEY_PREFIXES[1 if test else 0] + _random_base62(_API_KEY_RANDOM_CHARS)
    return body + _checksum(body)


def is_well_formed_api_key(value: str) -> bool:
    """Prefix, length, alphabet and checksum are right (says nothing about the key existing)."""
    if not value.startswith(API_KEY_PREFIXES):
        return False
    body, check = value[:-_CHECKSUM_CHARS], value[-_CHECKSUM_CHARS:]
    rest = body[len(API_KEY_PREFIXES[0]) :]
    if len(rest) != _API_KEY_RANDOM_CHARS or not all(c in BASE62 for c in rest):
        return False
    return hmac.compare_digest(check, _checksum(body))


def api_key_last4(value: str) -> str:
    """What listings show of a key."""
    return value[-4:]


def new_device_password() -> str:
    """A device password for the pairing QR code: 24 base62 characters (~143 bits)."""
    return _random_base62(_DEVICE_PASSWORD_CHARS)


def new_webhook_secret() -> str:
    """`whsec_` + base64 of 32 random bytes: the Standard Webhooks secret format.

    Receivers using a Standard Webhooks library pass it as is; the `X-Webhook-Signature`
    header of the FAQ's snippet uses the whole string as the HMAC key.
    """
    return "whsec_" + base64.b64encode(secrets.token_bytes(_WEBHOOK_SECRET_BYTES)).decode()


def new_otp_code(length: int = 6) -> str:
    """A uniformly random code of `length` decimal digits (leading zeros included)."""
    if not 4 <= length <= 8:
        raise ValueError("an OTP code has 4 to 8 digits")
    return str(secrets.randbelow(10**length)).zfill(length)


def hash_secret(pepper: bytes, value: str) -> str:
    """HMAC-SHA256(pepper, value) as hex: how keys, device passwords and OTP codes are stored."""
    return hmac.new(pepper, value.encode(), hashlib.sha256).hexdigest()


def verify_secret(pepper: bytes, value: str, expected_hash: str) -> bool:
    """Constant-time check of `value` against a stored `hash_secret` result."""
    return hmac.compare_digest(hash_secret(pepper, value), expected_hash)


def encrypt_secret(pepper: bytes, plaintext: str, *, bound_to: str) -> str:
    """Encrypt a secret the server must be able to read back (a webhook signing secret).

    `bound_to` (e.g. the webhook id) is authenticated but not stored: a ciphertext copied onto
    another row fails to decrypt. The result is `v1.<base64url(nonce || ciphertext+tag)>`; the
    version names the key derivation so that it can change later.
    """
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(_encryption_key(pepper)).encrypt(nonce, plaintext.encode(), bound_to.encode())
    return f"{_SEALED_VERSION}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"


def decrypt_secret(pepper: bytes, token: str, *, bound_to: str) -> str:
    """Inverse of `encrypt_secret`. Raises `ValueError` for a wrong pepper, row or a bad token."""
    version, _, payload = token.partition(".")
    if version != _SEALED_VERSION:
        raise ValueError("unknown encrypted secret format")
    try:
        raw = base64.urlsafe_b64decode(payload)
        plain = AESGCM(_encryption_key(pepper)).decrypt(raw[:12], raw[12:], bound_to.encode())
    except (InvalidTag, ValueError) as exc:
        raise ValueError("cannot decrypt secret: wrong pepper or corrupted value") from exc
    return plain.decode()


def _encryption_key(pepper: bytes) -> bytes:
    # Domain separation: the same pepper also keys hash_secret, never with this label.
    return hmac.new(pepper, b"zimsend/secret-encryption/v1", hashlib.sha256).digest()


def _random_base62(length: int) -> str:
    return "".join(secrets.choice(BASE62) for _ in range(length))


def _checksum(body: str) -> str:
    n = zlib.crc32(body.encode())
    digits = []
    for _ in range(_CHECKSUM_CHARS):
        n, r = divmod(n, 62)
        digits.append(BASE62[r])
    return "".join(reversed(digits))
