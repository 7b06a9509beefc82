"""Accounts: clients, their API keys and device credentials, and how secrets are kept.

    (this module)   the operations the admin CLI and the management RPCs share (one
                    implementation, two front doors): clients, API keys, devices
    credentials     identifiers, generated secrets, the pepper-keyed hashing and encryption
    verified_keys   API keys that passed authentication in the last second (`auth` fills it)

Secrets (API keys, device passwords) are generated here, returned once to the caller, and
stored only as peppered HMACs. Every function that touches an existing row takes the owning
`client_id` and filters on it: another client's id behaves exactly like an unknown one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlencode

from sqlmodel import Session, col, select

from zimsend.server.accounts import credentials
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.storage import ApiKey, Client, Database, Device, utcnow

MAX_NAME_LENGTH = 100


@dataclass(frozen=True)
class NewApiKey:
    key: ApiKey
    secret: str  # shown once


@dataclass(frozen=True)
class NewDevicePassword:
    device: Device
    password: str  # shown once
    pairing_uri: str


def check_name(name: str, field_name: str = "name") -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME_LENGTH:
        raise ApiError.invalid(
            ErrorCode.INVALID_REQUEST,
            field_name,
            f"{field_name} must be 1-{MAX_NAME_LENGTH} characters (got {len(name)}).",
        )
    return name


def create_client(db: Database, name: str) -> Client:
    client = Client(id=credentials.new_id("client"), name=check_name(name))
    with db.write() as session:
        session.add(client)
    return client


def client_exists(db: Database, client_id: str) -> bool:
    with db.session() as session:
        return session.get(Client, client_id) is not None


def set_rate_limit(db: Database, client_id: str, per_minute: int) -> Client:
    """Set a client's requests-per-minute limit; 0 restores the server default. Replicas
    pick the change up within `ratelimit.LIMIT_CACHE_SECONDS`."""
    if not 0 <= per_minute <= 1_000_000:
        raise ApiError.invalid(
            ErrorCode.INVALID_REQUEST, "per_minute", "per_minute must be 0-1000000."
        )
    with db.write() as session:
        client = session.get(Client, client_id)
        if client is None:
            raise ApiError.invalid(
                ErrorCode.INVALID_CLIENT_ID, "client_id", f"No client {client_id!r}."
            )
        client.rate_limit_per_minute = per_minute or None
        session.add(client)
    return client


def create_api_key(
    db: Database, pepper: bytes, client_id: str, name: str, *, test: bool = False
) -> NewApiKey:
    secret = credentials.new_api_key(test=test)
    key = ApiKey(
        id=credentials.new_id("key"),
        client_id=client_id,
        name=check_name(name),
        key_hash=credentials.hash_secret(pepper, secret),
        last4=credentials.api_key_last4(secret),
        test=test,
    )
    with db.write() as session:
        if session.get(Client, client_id) is None:
            raise ApiError.invalid(
                ErrorCode.INVALID_CLIENT_ID, "client_id", f"No client {client_id!r}."
            )
        session.add(key)
    return NewApiKey(key, secret)


def list_api_keys(db: Database, client_id: str) -> list[ApiKey]:
    with db.session() as session:
        query = (
            select(ApiKey)
            .where(ApiKey.client_id == client_id)
            .order_by(col(ApiKey.created_at).desc(), col(ApiKey.id))
        )
        return list(session.exec(query).all())


def revoke_api_key(db: Database, client_id: str, key_id: str) -> ApiKey:
    with db.write() as session:
        key = _owned(session, ApiKey, client_id, key_id)
        if key is None:
            raise ApiError.invalid(
                ErrorCode.API_KEY_NOT_FOUND, "key_id", f"No API key {key_id!r} for this client."
            )
        if key.revoked_at is None:
            key.revoked_at = utcnow()
            session.add(key)
        return key


def pairing_uri(
    server_address: str, client_id: str, device_id: str, password: str, *, tls: bool = False
) -> str:
    """`zimsend://pair?...` — what the QR code shown to the phone holds; `tls=1` when the
    phones' listener speaks TLS (the agent then connects with TLS)."""
    fields = {
        "server": server_address,
        "client_id": client_id,
        "device_id": device_id,
        "password": password,
    }
    if tls:
        fields["tls"] = "1"
    return f"zimsend://pair?{urlencode(fields)}"


def create_device(
    db: Database,
    pepper: bytes,
    client_id: str,
    name: str,
    *,
    server_address: str,
    simulated: bool = False,
    tls: bool = False,
) -> NewDevicePassword:
    password = credentials.new_device_password()
    device = Device(
        id=credentials.new_id("device"),
        client_id=client_id,
        name=check_name(name),
        password_hash=credentials.hash_secret(pepper, password),
        is_simulated=simulated,
    )
    with db.write() as session:
        if session.get(Client, client_id) is None:
            raise ApiError.invalid(
                ErrorCode.INVALID_CLIENT_ID, "client_id", f"No client {client_id!r}."
            )
        session.add(device)
    uri = pairing_uri(server_address, client_id, device.id, password, tls=tls)
    return NewDevicePassword(device, password, uri)


def rotate_device_password(
    db: Database,
    pepper: bytes,
    client_id: str,
    device_id: str,
    *,
    server_address: str,
    tls: bool = False,
) -> NewDevicePassword:
    password = credentials.new_device_password()
    with db.write() as session:
        device = _owned(session, Device, client_id, device_id)
        if device is None or device.deleted_at is not None:
            raise ApiError.invalid(
                ErrorCode.INVALID_DEVICE_ID,
                "device_id",
                f"No device {device_id!r} for this client.",
            )
        device.password_hash = credentials.hash_secret(pepper, password)
        session.add(device)
    return NewDevicePassword(
        device, password, pairing_uri(server_address, client_id, device_id, password, tls=tls)
    )


M = TypeVar("M", ApiKey, Device)


def _owned(session: Session, model: type[M], client_id: str, row_id: str) -> M | None:
    row = session.get(model, row_id)
    if row is None or row.client_id != client_id:
        return None
    return row
