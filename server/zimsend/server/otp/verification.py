"""One verification attempt (SPEC.md §6), safe against any number of concurrent guesses.

Why a single UPDATE … RETURNING: an attempt must be *spent* before the code is compared, and
spent in the same statement that reads the hash. The statement

    UPDATE otps SET attempts_used = attempts_used + 1
    WHERE id = :id AND client_id = :client AND attempts_used < max_attempts
      AND verified_at IS NULL AND expires_at > :now
    RETURNING code_hash, attempts_used, max_attempts, …

returns the hash only to a caller whose attempt it has just counted. On SQLite the write
transaction (`BEGIN IMMEDIATE`) runs one caller at a time; on PostgreSQL the row lock makes a
concurrent UPDATE wait and then re-check its WHERE against the committed row. Either way, 50
simultaneous guesses get at most `max_attempts` (3) comparisons and the other 47 are told
OTP_MAX_ATTEMPTS without the hash ever being read for them.

A right code then sets `verified_at` (again conditionally: of two concurrent right answers only
one wins) and writes the `otp.verified` outbox event, in the same transaction. When the UPDATE
matches nothing, the row is read to say why; every condition it tests only ever moves one way
(attempts grow, `verified_at` stays set, time passes), so that answer is never stale.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlmodel import Session, col

from zimsend.server.accounts.credentials import verify_secret
from zimsend.server.devicelink.transitions import iso, write_event
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.sending.fields import Violations, shown
from zimsend.server.storage import Database, Message, Otp, get_for_client

__all__ = ["MAX_CODE_CHARS", "Verdict", "verify"]

#: Longer input cannot be a code (8 digits at most); refusing it spares an HMAC of megabytes.
MAX_CODE_CHARS = 64
NEW_OTP = "request a new code with POST /v1/sms/send-otp"


@dataclass(frozen=True)
class Verdict:
    """The outcome of an attempt that could be checked (errors are raised instead)."""

    valid: bool
    message: str
    verified_at: dt.datetime | None = None
    attempts_remaining: int | None = None


def verify(
    db: Database, pepper: bytes, *, client_id: str, otp_id: str, code: str, now: dt.datetime
) -> Verdict:
    """Spend one attempt of `otp_id` on `code`; see the module docstring.

    Raises OTP_NOT_FOUND (unknown, another client's, already verified), OTP_MAX_ATTEMPTS
    (invalidated by wrong codes), OTP_EXPIRED, or INVALID_REQUEST for empty fields.
    """
    otp_id, code = _checked(otp_id, code)
    with db.write() as session:
        spent = session.execute(
            update(Otp)
            .where(
                col(Otp.id) == otp_id,
                col(Otp.client_id) == client_id,
                col(Otp.attempts_used) < col(Otp.max_attempts),
                col(Otp.verified_at).is_(None),
                col(Otp.expires_at) > now,
            )
            .values(attempts_used=col(Otp.attempts_used) + 1)
            .returning(
                col(Otp.code_hash),
                col(Otp.attempts_used),
                col(Otp.max_attempts),
                col(Otp.to),
                col(Otp.message_id),
            )
        ).first()
        if spent is None:
            raise _refusal(session, client_id, otp_id, now)
        code_hash, used, allowed, to, message_id = spent
        if not verify_secret(pepper, code, code_hash):
            left = max(0, allowed - used)
            return Verdict(False, _wrong_code_message(left), attempts_remaining=left)
        won = session.execute(
            update(Otp)
            .where(col(Otp.id) == otp_id, col(Otp.verified_at).is_(None))
            .values(verified_at=now)
            .returning(col(Otp.id))
        ).first()
        if won is None:  # a concurrent right answer was first (unreachable with row locks)
            raise _not_found(otp_id)
        meta = None
        if message_id is not None:
            meta = session.scalar(select(col(Message.meta)).where(col(Message.id) == message_id))
        write_event(
            session,
            client_id,
            "otp.verified",
            {
                "otp_id": otp_id,
                "to": to,
                "verified_at": iso(now),
                "message_id": message_id,
                "metadata": meta,
            },
            now=now,
        )
    return Verdict(True, "Code verified", verified_at=now)


def _checked(otp_id: str, code: str) -> tuple[str, str]:
    v = Violations()
    otp_id, code = otp_id.strip(), code.strip()
    if not otp_id:
        v.add(ErrorCode.INVALID_REQUEST, "otp_id", "is required: the otp_id SendOtp returned")
    if not code:
        v.add(ErrorCode.INVALID_REQUEST, "code", "is required: the code the user typed")
    elif len(code) > MAX_CODE_CHARS:
        v.add(
            ErrorCode.INVALID_REQUEST,
            "code",
            f"must be at most {MAX_CODE_CHARS} characters (got {len(code)}); codes have 4-8 digits",
        )
    v.raise_if_any()
    return otp_id, code


def _refusal(session: Session, client_id: str, otp_id: str, now: dt.datetime) -> ApiError:
    """Why no attempt could be spent. Another client's OTP answers like a missing one."""
    otp = get_for_client(session, Otp, otp_id, client_id)
    if otp is None or otp.verified_at is not None:
        return _not_found(otp_id)
    if otp.attempts_used >= otp.max_attempts:
        return ApiError(
            ErrorCode.OTP_MAX_ATTEMPTS,
            f"OTP {otp_id} was invalidated after {otp.max_attempts} wrong codes; {NEW_OTP}",
        )
    if otp.expires_at <= now:
        return ApiError(
            ErrorCode.OTP_EXPIRED,
            f"OTP {otp_id} expired at {iso(otp.expires_at)}; {NEW_OTP}",
        )
    return _not_found(otp_id)


def _not_found(otp_id: str) -> ApiError:
    return ApiError(
        ErrorCode.OTP_NOT_FOUND,
        f"No pending OTP {shown(otp_id)} for this client: it does not exist or was already "
        f"verified (a code works once); {NEW_OTP}",
    )


def _wrong_code_message(left: int) -> str:
    if left == 0:
        return f"Invalid code; no attempts remaining, this OTP is no longer valid: {NEW_OTP}"
    return f"Invalid code; {left} attempt{'s' if left > 1 else ''} remaining"
