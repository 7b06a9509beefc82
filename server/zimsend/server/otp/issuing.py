"""Issuing an OTP: the code, the `otps` row and the SMS that carries it, in one transaction.

Why through `sending.intake.Intake.accept`: an OTP is an immediate SendSms in every respect the
caller can observe — the same `X-Device-ID` rules (INVALID_DEVICE_ID, DEVICE_OFFLINE), the same
NO_DEVICE_AVAILABLE, test keys served by the simulated device. `accept` runs those checks and
queues the message; its `before_commit` hook adds what only an OTP has, inside the same write
transaction, so either all of it exists or none does:

1. the hourly limit (SPEC §6: at most 10 OTPs per hour per destination number per client),
   counted in the transaction that adds the new row. SQLite's single writer (`BEGIN
   IMMEDIATE`) already serialises such transactions; on PostgreSQL a transaction-scoped
   advisory lock on (client, number) does, so concurrent requests on several replicas cannot
   all see "9" and all insert;
2. the real text, sealed (`encrypt_secret`, bound to the new message id), on the message;
3. the `otps` row with the code's HMAC — never the code.

The code lives only in local variables of `issue` and in the sealed text; it is not returned.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

from sqlalchemy import select, text
from sqlmodel import Session, col

from zimsend.server.accounts import credentials
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.sending.intake import Accepted, Intake, Submission
from zimsend.server.services.convert import ts
from zimsend.server.storage import Otp
from zimsend.v1 import common_pb2
from zimsend.v1 import otp_pb2 as pb

from .rules import OtpPlan

__all__ = ["HOURLY_LIMIT", "RATE_WINDOW", "IssuedOtp", "issue"]

HOURLY_LIMIT = 10
RATE_WINDOW = dt.timedelta(hours=1)
OPERATION = "SendOtp"


@dataclass(frozen=True)
class IssuedOtp:
    """What SendOtp answers, and whether the dispatcher must be woken up."""

    response: pb.SendOtpResponse
    otp_id: str
    message_id: str
    created: bool


def issue(
    intake: Intake,
    pepper: bytes,
    *,
    client_id: str,
    test: bool,
    device_header: str | None,
    plan: OtpPlan,
    request_id: str | None = None,
) -> IssuedOtp:
    """Generate a code, queue its SMS and store the OTP; see the module docstring.

    Raises the SendSms availability errors, or OTP_RATE_LIMIT with a retry-after that says
    when the oldest OTP of the last hour leaves the window.
    """
    otp_id = credentials.new_id("otp")
    code = credentials.new_otp_code(plan.length)
    code_hash = credentials.hash_secret(pepper, code)
    real_text = plan.text(code)
    submission = Submission(
        client_id=client_id,
        test=test,
        device_header=device_header,
        operation=OPERATION,
        request_id=request_id,
    )
    send_plan = plan.send_plan()

    def store(session: Session, accepted: Accepted) -> None:
        (message,) = accepted.messages
        now = accepted.queued_at
        _enforce_hourly_limit(session, client_id, plan.to, now)
        message.sealed_body = credentials.encrypt_secret(pepper, real_text, bound_to=message.id)
        session.add(message)
        session.add(
            Otp(
                id=otp_id,
                client_id=client_id,
                to=plan.to,
                code_hash=code_hash,
                message_id=message.id,
                expires_at=now + plan.expiry,
                created_at=now,
            )
        )

    def respond(accepted: Accepted) -> pb.SendOtpResponse:
        (message,) = accepted.messages
        return pb.SendOtpResponse(
            success=True,
            otp_id=otp_id,
            to=plan.to,
            message_id=message.id,
            status=common_pb2.queued,
            expires_at=ts(accepted.queued_at + plan.expiry),
        )

    outcome = intake.accept(
        submission,
        lambda _now: send_plan,
        respond,
        pb.SendOtpResponse,
        before_commit=store,
    )
    return IssuedOtp(outcome.response, otp_id, outcome.response.message_id, outcome.created)


def _enforce_hourly_limit(session: Session, client_id: str, to: str, now: dt.datetime) -> None:
    """Refuse an 11th OTP to `to` within the last hour (a sliding window, per client)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"zimsend.otp:{client_id}:{to}"},
        )
    recent = (
        select(col(Otp.created_at))
        .where(
            col(Otp.client_id) == client_id,
            col(Otp.to) == to,
            col(Otp.created_at) > now - RATE_WINDOW,
        )
        .order_by(col(Otp.created_at).desc())
        .limit(HOURLY_LIMIT)
    )
    times = list(session.scalars(recent))
    if len(times) < HOURLY_LIMIT:
        return
    # The request is allowed again once the oldest of the newest ten leaves the window.
    retry_after = max(1.0, (times[-1] + RATE_WINDOW - now).total_seconds())
    raise ApiError(
        ErrorCode.OTP_RATE_LIMIT,
        f"At most {HOURLY_LIMIT} OTPs per hour may be sent to {to}; retry in "
        f"{math.ceil(retry_after)} s (Retry-After), or check why so many codes were requested",
        retry_after_seconds=retry_after,
    )
