"""WebhookService: configure (secret shown once), list, logs, test, delete, redeliver.

The RPCs only convert: validation, scoping and storage live in
`zimsend.server.webhook_endpoints`, delivery in the worker (`zimsend worker`). A test
or redelivered event is queued in the outbox like any other, so what a customer sees in the logs
is exactly what production deliveries do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from zimsend.server import webhook_endpoints
from zimsend.server.auth import Caller
from zimsend.server.rpc import public_rpc
from zimsend.server.services.convert import paging, ts
from zimsend.server.state import ServerState
from zimsend.server.storage import WebhookEndpoint
from zimsend.v1 import common_pb2
from zimsend.v1 import webhooks_pb2 as pb
from zimsend.v1 import webhooks_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer


class WebhookService(pb_grpc.WebhookServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @public_rpc
    async def ConfigureWebhook(
        self,
        request: pb.ConfigureWebhookRequest,
        context: grpc.aio.ServicerContext[pb.ConfigureWebhookRequest, pb.ConfigureWebhookResponse],
        caller: Caller,
    ) -> pb.ConfigureWebhookResponse:
        new = await self.state.db_call(
            webhook_endpoints.configure,
            self.state.db,
            self.state.pepper,
            caller.client_id,
            url=request.url,
            events=list(request.events),
            secret=request.secret,
            allow_insecure=self.state.settings.webhooks_allow_insecure,
        )
        return pb.ConfigureWebhookResponse(
            success=True,
            webhook_id=new.endpoint.id,
            url=new.endpoint.url,
            events=new.endpoint.events,
            secret=new.secret,
            status=new.endpoint.status,
        )

    @public_rpc
    async def ListWebhooks(
        self,
        request: pb.ListWebhooksRequest,
        context: grpc.aio.ServicerContext[pb.ListWebhooksRequest, pb.ListWebhooksResponse],
        caller: Caller,
    ) -> pb.ListWebhooksResponse:
        rows = await self.state.db_call(
            webhook_endpoints.list_endpoints, self.state.db, caller.client_id
        )
        return pb.ListWebhooksResponse(success=True, webhooks=[_webhook(r) for r in rows])

    @public_rpc
    async def ListWebhookLogs(
        self,
        request: pb.ListWebhookLogsRequest,
        context: grpc.aio.ServicerContext[pb.ListWebhookLogsRequest, pb.ListWebhookLogsResponse],
        caller: Caller,
    ) -> pb.ListWebhookLogsResponse:
        page = await self.state.db_call(
            webhook_endpoints.list_logs,
            self.state.db,
            caller.client_id,
            *paging(request),
            webhook_id=request.webhook_id,
            event_id=request.event_id,
            message_id=request.message_id,
        )
        return pb.ListWebhookLogsResponse(
            success=True,
            logs=[_log(row) for row in page.logs],
            pagination=common_pb2.Pagination(
                current_page=page.page,
                per_page=page.per_page,
                total_pages=page.total_pages,
                total_items=page.total_items,
            ),
        )

    @public_rpc
    async def TestWebhook(
        self,
        request: pb.TestWebhookRequest,
        context: grpc.aio.ServicerContext[pb.TestWebhookRequest, pb.TestWebhookResponse],
        caller: Caller,
    ) -> pb.TestWebhookResponse:
        event = await self.state.db_call(
            webhook_endpoints.queue_test_event, self.state.db, caller.client_id, request.webhook_id
        )
        return pb.TestWebhookResponse(
            success=True,
            event_id=event.id,
            message="Test event queued; its attempts appear in"
            f" GET /v1/webhooks/logs?event_id={event.id}",
        )

    @public_rpc
    async def DeleteWebhook(
        self,
        request: pb.DeleteWebhookRequest,
        context: grpc.aio.ServicerContext[pb.DeleteWebhookRequest, pb.DeleteWebhookResponse],
        caller: Caller,
    ) -> pb.DeleteWebhookResponse:
        endpoint = await self.state.db_call(
            webhook_endpoints.delete, self.state.db, caller.client_id, request.webhook_id
        )
        return pb.DeleteWebhookResponse(success=True, webhook_id=endpoint.id)

    @public_rpc
    async def RedeliverWebhookEvent(
        self,
        request: pb.RedeliverWebhookEventRequest,
        context: grpc.aio.ServicerContext[
            pb.RedeliverWebhookEventRequest, pb.RedeliverWebhookEventResponse
        ],
        caller: Caller,
    ) -> pb.RedeliverWebhookEventResponse:
        event = await self.state.db_call(
            webhook_endpoints.redeliver, self.state.db, caller.client_id, request.event_id
        )
        return pb.RedeliverWebhookEventResponse(success=True, event_id=event.id)


def _webhook(row: WebhookEndpoint) -> pb.Webhook:
    return pb.Webhook(
        webhook_id=row.id,
        url=row.url,
        events=row.events,
        status=row.status,
        created_at=ts(row.created_at),
    )


def _log(entry: webhook_endpoints.LogEntry) -> pb.WebhookLog:
    row = entry.delivery
    return pb.WebhookLog(
        event_id=row.event_id,
        event=row.event_type,
        webhook_id=row.webhook_id or "",
        url=row.url,
        response_status=row.response_status or 0,
        response_time_ms=row.response_time_ms or 0,
        success=row.success,
        attempt=row.attempt,
        timestamp=ts(row.created_at),
        error=row.error or "",
        message_id=entry.message_id or "",
    )


def register(server: ZimSendServer) -> str:
    pb_grpc.add_WebhookServiceServicer_to_server(WebhookService(server.state), server.grpc_server)
    return "zimsend.v1.WebhookService"
