"""Storage rows as the API shows them: protobuf messages and export rows.

`message_fields` is the single mapping from a `Message` row to the fields that `SmsMessage`
and `GetSmsStatusResponse` share (same names, same meaning), so status, history and export
can never disagree. Two conversions matter:

- encoding: storage says "GSM-7"/"UCS-2", the API's enum `GSM7`/`UCS2`;
- attempts: storage counts resends and automatic re-routes (0 for a message sent once); the API
  shows the attempt number (1 for the first, 2 after the first resend or re-route), as
  `ResendSmsResponse` documents;
- error: the stored FailureCode is shown as SPEC's public `code` plus `reason`, `retryable`
  and `hint` (`failures.error_payload`, the same as webhooks).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from typing import Any, TypeVar

from google.protobuf import json_format, struct_pb2

from zimsend.server import failures
from zimsend.server.services.convert import set_ts, ts
from zimsend.server.storage import InboundMessage, Message, MessageStatus
from zimsend.v1 import common_pb2, sms_pb2

from .dates import iso
from .intake import Accepted

B = TypeVar("B", sms_pb2.SendBulkSmsResponse, sms_pb2.SendBulkPersonalizedSmsResponse)

ENCODING = {"GSM-7": common_pb2.GSM7, "UCS-2": common_pb2.UCS2}
ENCODING_NAME = {"GSM-7": "GSM7", "UCS-2": "UCS2"}
STATUS = {name: common_pb2.MessageStatus.Value(name) for name in common_pb2.MessageStatus.keys()}


def status_value(status: str) -> int:
    return STATUS.get(status, common_pb2.MESSAGE_STATUS_UNSPECIFIED)


def struct(data: dict[str, Any] | None) -> struct_pb2.Struct | None:
    if data is None:
        return None
    out = struct_pb2.Struct()
    out.update(data)
    return out


def message_fields(message: Message) -> dict[str, Any]:
    """Keyword arguments for `SmsMessage(...)` and `GetSmsStatusResponse(...)`."""
    fields: dict[str, Any] = {
        "message_id": message.id,
        "status": status_value(message.status),
        "to": message.to,
        "message": message.body,
        "priority": message.priority,
        "device_id": message.device_id or "",
        "segments": message.segments,
        "encoding": ENCODING.get(message.encoding, common_pb2.ENCODING_UNSPECIFIED),
        "created_at": ts(message.created_at),
        "queued_at": ts(message.queued_at),
        "sent_at": ts(message.sent_at),
        "delivered_at": ts(message.delivered_at),
        "failed_at": ts(message.failed_at),
        "metadata": struct(message.meta),
        "scheduled_at": ts(message.scheduled_at),
        "cancelled_at": ts(message.cancelled_at),
        "attempts": message.attempts + 1,
        "batch_id": message.batch_id or "",
    }
    if message.status == "queued" and message.held_until is not None:
        fields["held_until"] = ts(message.held_until)
        fields["hold_reason"] = message.hold_reason or ""
    if message.error_code:
        fields["error"] = common_pb2.MessageError(
            **failures.error_payload(message.error_code, message.error_message, message.device_id)
        )
    if message.status == MessageStatus.SENT and message.delivery_report_missing_at is not None:
        fields["delivery_report_missing"] = True
    return {k: v for k, v in fields.items() if v is not None}


def sms_message(message: Message) -> sms_pb2.SmsMessage:
    return sms_pb2.SmsMessage(**message_fields(message))


def send_response(done: Accepted) -> sms_pb2.SendSmsResponse:
    """SendSms's documented answer for a freshly queued message."""
    message = done.messages[0]
    response = sms_pb2.SendSmsResponse(
        success=True,
        message_id=message.id,
        status=common_pb2.queued,
        to=message.to,
        segments=message.segments,
        encoding=ENCODING[message.encoding],
        priority=message.priority,
    )
    set_ts(response.queued_at, done.queued_at)
    set_ts(response.estimated_delivery, done.estimated_delivery)
    set_ts(response.scheduled_at, message.scheduled_at)
    return response


def bulk_response(response_type: type[B]) -> Callable[[Accepted], B]:
    """The answer of SendBulkSms / SendBulkPersonalizedSms (one shape for both)."""

    def respond(done: Accepted) -> B:
        return response_type(
            success=True,
            batch_id=done.batch_id or "",
            total_recipients=len(done.messages),
            messages=[
                sms_pb2.BulkMessageResult(message_id=m.id, to=m.to, status=common_pb2.queued)
                for m in done.messages
            ],
            queued_at=ts(done.queued_at),
        )

    return respond


def inbound_sms(row: InboundMessage) -> common_pb2.InboundSms:
    return common_pb2.InboundSms(
        **{"from": row.from_number},
        id=row.id,
        device_id=row.device_id,
        message=row.body,
        sim_slot=row.sim_slot or 0,
        received_at=ts(row.received_at),
    )


# --- Export ------------------------------------------------------------------------------

CSV_COLUMNS = [
    "message_id",
    "status",
    "to",
    "message",
    "priority",
    "device_id",
    "segments",
    "encoding",
    "created_at",
    "queued_at",
    "scheduled_at",
    "sent_at",
    "delivered_at",
    "failed_at",
    "cancelled_at",
    "error_code",
    "error_message",
    "attempts",
    "batch_id",
    "metadata",
    "error_reason",
    "error_retryable",
    "error_hint",
    "delivery_report_missing",
]


def csv_header() -> str:
    return _csv_line(CSV_COLUMNS)


def csv_row(message: Message) -> str:
    def when(value: Any) -> str:
        return iso(value) if value is not None else ""

    return _csv_line(
        [
            message.id,
            message.status,
            message.to,
            message.body,
            common_pb2.Priority.Name(common_pb2.Priority.ValueType(message.priority)),
            message.device_id or "",
            str(message.segments),
            ENCODING_NAME.get(message.encoding, message.encoding),
            when(message.created_at),
            when(message.queued_at),
            when(message.scheduled_at),
            when(message.sent_at),
            when(message.delivered_at),
            when(message.failed_at),
            when(message.cancelled_at),
            failures.info(message.error_code).public_code if message.error_code else "",
            message.error_message or "",
            str(message.attempts + 1),
            message.batch_id or "",
            json.dumps(message.meta, separators=(",", ":"), ensure_ascii=False)
            if message.meta is not None
            else "",
            *_failure_columns(message),
        ]
    )


def _failure_columns(message: Message) -> list[str]:
    """The CSV's issue-16 columns (appended, so existing readers keep their positions): the
    public `error_code` stays SPEC's, these say the precise reason, whether a resend may
    succeed, the hint, and a missing delivery report."""
    report_missing = (
        message.status == MessageStatus.SENT and message.delivery_report_missing_at is not None
    )
    if not message.error_code:
        return ["", "", "", "true" if report_missing else "false"]
    error = failures.error_payload(message.error_code, message.error_message, message.device_id)
    return [
        error["reason"],
        "true" if error["retryable"] else "false",
        error["hint"],
        "true" if report_missing else "false",
    ]


def jsonl_row(message: Message) -> str:
    """One history entry exactly as the REST API prints it, on one line."""
    data = json_format.MessageToDict(sms_message(message), preserving_proto_field_name=True)
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False) + "\n"


def _csv_line(values: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()
