"""One message by id: its status, cancelling it, sending it again (SPEC.md §3).

Every lookup is scoped by client and by the retention window: another client's message, an
unknown id and a message from before the retention window (`retention_start`) all answer
MESSAGE_NOT_FOUND, alike.

Cancel and resend are single conditional UPDATEs (`… WHERE status = 'queued'` /
`'failed'`), so they race safely with the dispatcher: if a phone claimed the message a
microsecond earlier, the UPDATE matches nothing and the caller learns the status that won.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import CursorResult, delete, update
from sqlmodel import Session, col, select

from zimsend.server.compliance import opt_outs, quiet_hours
from zimsend.server.compliance.policy import load as load_policy
from zimsend.server.config import Settings
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.storage import (
    Database,
    Message,
    MessagePart,
    MessageStatus,
    Otp,
    get_for_client,
    utcnow,
)

from .fields import shown

_HANDED_TO_PHONE = (MessageStatus.PROCESSING, MessageStatus.SENT, MessageStatus.DELIVERED)
#: Far above any id ZimSend issues (`msg_` + 16 hex): longer is not an id at all, and is
#: refused as a bad request rather than looked up and reported "not found".
MAX_MESSAGE_ID_CHARS = 64


def retention_start(settings: Settings, now: dt.datetime) -> dt.datetime:
    """Midnight UTC of the first day inside retention: messages created before it are gone
    from the API (only daily aggregates remain). Whole days, so that history, stats and the
    worker's purge (`worker.retention`) agree on which day is whose."""
    first_day = (now - dt.timedelta(days=settings.retention_days)).astimezone(dt.UTC).date()
    return dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC)


def _visible(
    session: Session, settings: Settings, client_id: str, message_id: str, now: dt.datetime
) -> Message:
    if len(message_id) > MAX_MESSAGE_ID_CHARS:
        raise ApiError.invalid(
            ErrorCode.INVALID_REQUEST,
            "message_id",
            f"message_id must be a message id such as msg_1234567890abcdef, at most "
            f"{MAX_MESSAGE_ID_CHARS} characters (got {len(message_id)})",
        )
    message = get_for_client(session, Message, message_id, client_id) if message_id else None
    if message is None or message.created_at < retention_start(settings, now):
        raise ApiError.invalid(
            ErrorCode.MESSAGE_NOT_FOUND,
            "message_id",
            f"No message {shown(message_id)} for this client (unknown id, or older than the "
            f"{settings.retention_days}-day history)",
        )
    return message


def get_status(db: Database, settings: Settings, client_id: str, message_id: str) -> Message:
    with db.session() as session:
        return _visible(session, settings, client_id, message_id, utcnow())


def cancel(db: Database, settings: Settings, client_id: str, message_id: str) -> Message:
    """`queued` → `cancelled`; anything else is CANNOT_CANCEL_MESSAGE naming the status."""
    now = utcnow()
    with db.write() as session:
        _visible(session, settings, client_id, message_id, now)
        done = session.execute(
            update(Message)
            .where(
                col(Message.id) == message_id,
                col(Message.client_id) == client_id,
                col(Message.status) == MessageStatus.QUEUED,
            )
            .values(status=MessageStatus.CANCELLED, cancelled_at=now)
            .execution_options(synchronize_session=False)
        )
        message = _reload(session, message_id)
        assert isinstance(done, CursorResult)  # an UPDATE's result
        if done.rowcount != 1:
            why = (
                " (it was already handed to a phone)" if message.status in _HANDED_TO_PHONE else ""
            )
            raise ApiError(
                ErrorCode.CANNOT_CANCEL_MESSAGE,
                f"Message {message_id} is {message.status}{why}; only queued messages can be "
                "cancelled",
                metadata={"status": message.status},
            )
        return message


def resend(db: Database, settings: Settings, client_id: str, message_id: str) -> Message:
    """`failed` → `queued` again: same id, one more attempt, a fresh due time and TTL.

    The previous attempt's device, error, timestamps and part reports are cleared so the new
    attempt starts clean and is due at once. A pin (`X-Device-ID` at send time) still holds;
    `scheduled_at` stays as the record of the original schedule.
    """
    now = utcnow()
    with db.write() as session:
        message = _visible(session, settings, client_id, message_id, now)
        is_otp = session.exec(select(Otp.id).where(Otp.message_id == message_id)).first()
        if is_otp is not None and message.status == MessageStatus.FAILED:
            raise ApiError(
                ErrorCode.CANNOT_RESEND_MESSAGE,
                f"Message {message_id} carries a one-time code and cannot be sent again; "
                "request a new OTP with POST /v1/sms/send-otp",
            )
        # The client's policy holds for a resend as for a send (docs/compliance.md).
        hold = (
            _policy_hold(session, message, now) if message.status == MessageStatus.FAILED else None
        )
        due = hold or now
        done = session.execute(
            update(Message)
            .where(
                col(Message.id) == message_id,
                col(Message.client_id) == client_id,
                col(Message.status) == MessageStatus.FAILED,
            )
            .values(
                status=MessageStatus.QUEUED,
                attempts=Message.attempts + 1,
                device_id=None,
                error_code=None,
                error_message=None,
                parts=None,
                processing_at=None,
                sent_at=None,
                delivered_at=None,
                failed_at=None,
                queued_at=now,
                due_at=due,
                expires_at=due + dt.timedelta(hours=settings.message_ttl_hours),
                held_until=hold,
                hold_reason=quiet_hours.HOLD_REASON if hold else None,
            )
            .execution_options(synchronize_session=False)
        )
        assert isinstance(done, CursorResult)  # an UPDATE's result
        if done.rowcount != 1:
            current = _reload(session, message_id)
            raise ApiError(
                ErrorCode.CANNOT_RESEND_MESSAGE,
                f"Message {message_id} is {current.status}; only failed messages can be resent",
                metadata={"status": current.status},
            )
        session.execute(delete(MessagePart).where(col(MessagePart.message_id) == message_id))
        # A fresh start for failover's count and the missing-report flag (issue 16).
        session.execute(
            update(Message)
            .where(col(Message.id) == message_id)
            .values(reroutes=0, delivery_report_missing_at=None)
        )
        return _reload(session, message_id)


def _policy_hold(session: Session, message: Message, now: dt.datetime) -> dt.datetime | None:
    """RECIPIENT_OPTED_OUT when the message's recipient opted out since; else the end of the
    recipient's quiet hours when `now` is inside them (None: it may go now)."""
    policy = load_policy(session, message.client_id)
    opt_outs.refuse_numbers(session.connection(), message.client_id, [("to", message.to)])
    return quiet_hours.hold_for(policy.quiet_window, message.to, message.priority, now)


def _reload(session: Session, message_id: str) -> Message:
    message = session.get(Message, message_id, populate_existing=True)
    assert message is not None
    return message
