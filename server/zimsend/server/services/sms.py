"""SmsService: send, bulk, status, cancel, resend, history, export, stats, inbox (SPEC §3-4).

The servicer only translates: requests in, `zimsend.server.sending` does the work in the
database thread pool, protobuf responses out. After every commit that queues messages it
wakes the dispatcher (`ServerState.new_work`), so a new message does not wait for a poll.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from google.api import httpbody_pb2
from google.protobuf.message import Message as ProtoMessage

from zimsend.server import logs, metrics
from zimsend.server.auth import Caller
from zimsend.server.errors import ErrorCode
from zimsend.server.rpc import public_rpc, public_stream_rpc
from zimsend.server.sending import history, idempotency, one_message, stats, validation, views
from zimsend.server.sending.fields import Violations, shown
from zimsend.server.sending.intake import Accepted, Submission
from zimsend.server.services.convert import paging, ts
from zimsend.server.state import ServerState
from zimsend.server.storage import utcnow
from zimsend.v1 import common_pb2
from zimsend.v1 import sms_pb2 as pb
from zimsend.v1 import sms_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

log = logs.get("zimsend.sms")
#: The response type of one send operation (`_send`).
R = TypeVar("R", bound=ProtoMessage)
EXPORT_CHUNK_ROWS = 500
EXPORT_FORMATS = {"csv": "text/csv; charset=utf-8", "jsonl": "application/x-ndjson"}


class SmsService(pb_grpc.SmsServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    # --- Sending -----------------------------------------------------------------------

    @public_rpc
    async def SendSms(
        self,
        request: pb.SendSmsRequest,
        context: grpc.aio.ServicerContext[pb.SendSmsRequest, pb.SendSmsResponse],
        caller: Caller,
    ) -> pb.SendSmsResponse:
        return await self._send(
            request,
            context,
            caller,
            "SendSms",
            validation.validate_send,
            views.send_response,
            pb.SendSmsResponse,
        )

    @public_rpc
    async def SendBulkSms(
        self,
        request: pb.SendBulkSmsRequest,
        context: grpc.aio.ServicerContext[pb.SendBulkSmsRequest, pb.SendBulkSmsResponse],
        caller: Caller,
    ) -> pb.SendBulkSmsResponse:
        return await self._send(
            request,
            context,
            caller,
            "SendBulkSms",
            validation.validate_bulk,
            views.bulk_response(pb.SendBulkSmsResponse),
            pb.SendBulkSmsResponse,
        )

    @public_rpc
    async def SendBulkPersonalizedSms(
        self,
        request: pb.SendBulkPersonalizedSmsRequest,
        context: grpc.aio.ServicerContext[
            pb.SendBulkPersonalizedSmsRequest, pb.SendBulkPersonalizedSmsResponse
        ],
        caller: Caller,
    ) -> pb.SendBulkPersonalizedSmsResponse:
        return await self._send(
            request,
            context,
            caller,
            "SendBulkPersonalizedSms",
            validation.validate_personalized,
            views.bulk_response(pb.SendBulkPersonalizedSmsResponse),
            pb.SendBulkPersonalizedSmsResponse,
        )

    async def _send(
        self,
        request: Any,
        context: grpc.aio.ServicerContext[Any, Any],
        caller: Caller,
        operation: str,
        validate: Callable[..., validation.SendPlan],
        respond: Callable[[Accepted], R],
        response_type: type[R],
    ) -> R:
        key = idempotency.resolve_key(caller.idempotency_key, request.idempotency_key)
        submission = Submission(
            client_id=caller.client_id,
            test=caller.test,
            device_header=caller.device_id,
            operation=operation,
            key=key,
            request_hash=idempotency.request_hash(
                request, operation=operation, device_id=caller.device_id, test=caller.test
            )
            if key
            else "",
            request_id=caller.request_id,
        )
        allow_insecure = self.state.settings.webhooks_allow_insecure

        def check(now: dt.datetime) -> validation.SendPlan:
            return validate(request, now, allow_insecure_webhooks=allow_insecure)

        outcome = await self.state.intake.submit(submission, check, respond, response_type)
        self.state.new_work.announce(caller.client_id, outcome.due_at)
        accepted(submission, outcome.message_ids)
        return outcome.response

    # --- One message -------------------------------------------------------------------

    @public_rpc
    async def GetSmsStatus(
        self,
        request: pb.GetSmsStatusRequest,
        context: grpc.aio.ServicerContext[pb.GetSmsStatusRequest, pb.GetSmsStatusResponse],
        caller: Caller,
    ) -> pb.GetSmsStatusResponse:
        message = await self.state.db_call(
            one_message.get_status,
            self.state.db,
            self.state.settings,
            caller.client_id,
            request.message_id.strip(),
        )
        return pb.GetSmsStatusResponse(success=True, **views.message_fields(message))

    @public_rpc
    async def CancelSms(
        self,
        request: pb.CancelSmsRequest,
        context: grpc.aio.ServicerContext[pb.CancelSmsRequest, pb.CancelSmsResponse],
        caller: Caller,
    ) -> pb.CancelSmsResponse:
        message = await self.state.db_call(
            one_message.cancel,
            self.state.db,
            self.state.settings,
            caller.client_id,
            request.message_id.strip(),
        )
        return pb.CancelSmsResponse(
            success=True,
            message="Message cancelled",
            message_id=message.id,
            status=common_pb2.cancelled,
        )

    @public_rpc
    async def ResendSms(
        self,
        request: pb.ResendSmsRequest,
        context: grpc.aio.ServicerContext[pb.ResendSmsRequest, pb.ResendSmsResponse],
        caller: Caller,
    ) -> pb.ResendSmsResponse:
        message = await self.state.db_call(
            one_message.resend,
            self.state.db,
            self.state.settings,
            caller.client_id,
            request.message_id.strip(),
        )
        self.state.new_work.notify(caller.client_id)
        return pb.ResendSmsResponse(
            success=True,
            message_id=message.id,
            status=common_pb2.queued,
            attempts=message.attempts + 1,
            queued_at=ts(message.queued_at),
        )

    # --- Many messages -----------------------------------------------------------------

    @public_rpc
    async def ListSmsHistory(
        self,
        request: pb.ListSmsHistoryRequest,
        context: grpc.aio.ServicerContext[pb.ListSmsHistoryRequest, pb.ListSmsHistoryResponse],
        caller: Caller,
    ) -> pb.ListSmsHistoryResponse:
        v = Violations()
        page = history.page_of(v, *paging(request))
        flt = history.message_filter(
            v,
            self.state.settings,
            caller.client_id,
            from_date=request.from_date,
            to_date=request.to_date,
            status=int(request.status),
            to=request.to,
            device_id=request.device_id,
            search=request.search,
            report_missing=(
                request.delivery_report_missing
                if request.HasField("delivery_report_missing")
                else None
            ),
        )
        v.raise_if_any()
        listed = await self.state.db_call(history.list_messages, self.state.db, flt, page)
        return pb.ListSmsHistoryResponse(
            success=True,
            data=[views.sms_message(m) for m in listed.rows],
            pagination=_pagination(listed),
        )

    @public_stream_rpc
    async def ExportSmsHistory(
        self,
        request: pb.ExportSmsHistoryRequest,
        context: grpc.aio.ServicerContext[pb.ExportSmsHistoryRequest, httpbody_pb2.HttpBody],
        caller: Caller,
    ) -> AsyncIterator[httpbody_pb2.HttpBody]:
        """CSV (header line, then rows) or JSON lines, in chunks of 500 messages, oldest
        first. The last chunk ends with a completion line — `# end of export: N messages` in
        CSV, `{"end_of_export":true,"total":N}` in JSON lines — because a REST client cannot
        see a stream that broke midway (DESIGN "The edge"); a file without it is truncated."""
        v = Violations()
        fmt = (request.format or "csv").strip().lower()
        if fmt not in EXPORT_FORMATS:
            v.add(
                ErrorCode.INVALID_REQUEST,
                "format",
                f"must be csv or jsonl (got {shown(request.format)})",
            )
        flt = history.message_filter(
            v,
            self.state.settings,
            caller.client_id,
            from_date=request.from_date,
            to_date=request.to_date,
            status=int(request.status),
            device_id=request.device_id,
        )
        v.raise_if_any()
        content_type = EXPORT_FORMATS[fmt]
        row = views.csv_row if fmt == "csv" else views.jsonl_row
        head = views.csv_header() if fmt == "csv" else ""
        total = 0
        after: tuple[dt.datetime, str] | None = None
        while True:
            rows = await self.state.db_call(
                history.export_chunk, self.state.db, flt, after, EXPORT_CHUNK_ROWS
            )
            total += len(rows)
            text = head + "".join(row(m) for m in rows)
            head = ""
            if len(rows) < EXPORT_CHUNK_ROWS:
                text += _end_of_export(fmt, total)
                yield httpbody_pb2.HttpBody(content_type=content_type, data=text.encode())
                return
            yield httpbody_pb2.HttpBody(content_type=content_type, data=text.encode())
            after = (rows[-1].created_at, rows[-1].id)

    @public_rpc
    async def GetSmsStats(
        self,
        request: pb.GetSmsStatsRequest,
        context: grpc.aio.ServicerContext[pb.GetSmsStatsRequest, pb.GetSmsStatsResponse],
        caller: Caller,
    ) -> pb.GetSmsStatsResponse:
        v = Violations()
        start, end = history.period_of(v, request.from_date, request.to_date)
        v.raise_if_any()
        start, end = stats.default_period(start, end, utcnow())
        if start > end:
            v.add(
                ErrorCode.INVALID_REQUEST,
                "from_date",
                "must not be after to_date (to_date defaults to now)",
            )
            v.raise_if_any()
        result = await self.state.db_call(
            stats.compute,
            self.state.db,
            self.state.settings,
            caller.client_id,
            start,
            end,
            request.device_id.strip() or None,
        )
        return pb.GetSmsStatsResponse(
            success=True,
            period=pb.StatsPeriod(**{"from": ts(result.start), "to": ts(result.end)}),
            stats=pb.SmsStats(
                total_sent=result.total_sent,
                delivered=result.delivered,
                failed=result.failed,
                pending=result.pending,
                delivery_rate=result.delivery_rate,
                by_day=[
                    pb.DailyStats(
                        date=day.isoformat(), sent=c.sent, delivered=c.delivered, failed=c.failed
                    )
                    for day, c in result.by_day()
                ],
            ),
        )

    @public_rpc
    async def ListInboundSms(
        self,
        request: pb.ListInboundSmsRequest,
        context: grpc.aio.ServicerContext[pb.ListInboundSmsRequest, pb.ListInboundSmsResponse],
        caller: Caller,
    ) -> pb.ListInboundSmsResponse:
        v = Violations()
        page = history.page_of(v, *paging(request))
        start, end = history.period_of(v, request.from_date, request.to_date)
        v.raise_if_any()
        listed = await self.state.db_call(
            history.list_inbound,
            self.state.db,
            self.state.settings,
            caller.client_id,
            start=start,
            end=end,
            device_id=request.device_id,
            page=page,
        )
        return pb.ListInboundSmsResponse(
            success=True,
            data=[views.inbound_sms(m) for m in listed.rows],
            pagination=_pagination(listed),
        )


def accepted(submission: Submission, message_ids: tuple[str, ...]) -> None:
    """Count and log a send request's outcome: the messages it queued (none when it was an
    idempotent replay). One line per request; bulk requests list their message ids."""
    metrics.MESSAGES_ACCEPTED.inc(len(message_ids))
    ids: dict[str, Any] = (
        {"message_id": message_ids[0]} if len(message_ids) == 1 else {"message_ids": message_ids}
    )
    logs.hot_info(
        log,
        "sms.accepted",
        request_id=submission.request_id,
        client_id=submission.client_id,
        operation=submission.operation,
        replayed=not message_ids,
        sandbox=submission.test,
        **ids,
    )


def _pagination(listed: history.Listed) -> common_pb2.Pagination:
    return common_pb2.Pagination(
        current_page=listed.page.number,
        per_page=listed.page.limit,
        total_pages=listed.total_pages,
        total_items=listed.total,
    )


def _end_of_export(fmt: str, total: int) -> str:
    if fmt == "csv":
        return f"# end of export: {total} messages\r\n"
    return f'{{"end_of_export":true,"total":{total}}}\n'


def register(server: ZimSendServer) -> str:
    pb_grpc.add_SmsServiceServicer_to_server(SmsService(server.state), server.grpc_server)
    return "zimsend.v1.SmsService"
