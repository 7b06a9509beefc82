"""Helpers for the OTP tests (test_otp*.py).

What a test needs to know but the API never tells — the code of an OTP — `code_of` recovers
the way an attacker holding the database *and* the pepper could: by trying every 4-digit code
against the stored HMAC. Everything else here is a thin typed wrapper over the gRPC stubs.
"""

from __future__ import annotations

from typing import Any

from _sms import Account
from conftest import TEST_PEPPER
from google.protobuf import struct_pb2
from sqlmodel import select

from zimsend.server.accounts.credentials import hash_secret
from zimsend.server.storage import Database, Otp, OutboxEvent
from zimsend.v1 import otp_pb2 as pb
from zimsend.v1 import otp_pb2_grpc as pb_grpc

PEPPER = TEST_PEPPER.encode()
TO = "+33612345678"


def send(
    stub: pb_grpc.OtpServiceStub,
    account: Account,
    *,
    test: bool = True,
    device: str | None = None,
    **fields: Any,
) -> pb.SendOtpResponse:
    fields.setdefault("to", TO)
    return stub.SendOtp(
        pb.SendOtpRequest(**fields), metadata=account.md(test=test, device=device), timeout=10
    )


def check(
    stub: pb_grpc.OtpServiceStub, account: Account, otp_id: str, code: str
) -> pb.VerifyOtpResponse:
    return check_with(stub, account.md(test=True), otp_id, code)


def check_with(
    stub: pb_grpc.OtpServiceStub, md: Any, otp_id: str, code: str
) -> pb.VerifyOtpResponse:
    return stub.VerifyOtp(pb.VerifyOtpRequest(otp_id=otp_id, code=code), metadata=md, timeout=10)


def otp_row(db: Database, otp_id: str) -> Otp:
    with db.session() as session:
        row = session.get(Otp, otp_id)
        assert row is not None
        return row


def code_of(db: Database, otp_id: str, length: int = 4) -> str:
    """The code, recovered from its HMAC by trying all of them (test pepper, short codes)."""
    stored = otp_row(db, otp_id).code_hash
    for n in range(10**length):
        candidate = str(n).zfill(length)
        if hash_secret(PEPPER, candidate) == stored:
            return candidate
    raise AssertionError(f"no {length}-digit code matches {otp_id}")


def wrong_codes(right: str, count: int) -> list[str]:
    return [c for c in (str(n).zfill(len(right)) for n in range(count + 1)) if c != right][:count]


def events(db: Database, client_id: str) -> list[OutboxEvent]:
    with db.session() as session:
        return list(session.exec(select(OutboxEvent).where(OutboxEvent.client_id == client_id)))


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    out.update(data)
    return out
