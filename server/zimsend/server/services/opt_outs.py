"""OptOutService: the client's suppression list — list, add, remove (docs/compliance.md).

The RPCs only convert: `zimsend.server.compliance.opt_outs` does the work, in the database
thread pool. Adding or removing writes the `sms.opted_out` / `sms.opted_in` event in the same
transaction, as an inbound STOP or START does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from zimsend.server import logs
from zimsend.server.auth import Caller
from zimsend.server.compliance import opt_outs
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.rpc import public_rpc
from zimsend.server.sending import history
from zimsend.server.sending.fields import Violations
from zimsend.server.services.convert import paging, ts
from zimsend.server.state import ServerState
from zimsend.server.storage import Database, OptOut
from zimsend.v1 import common_pb2
from zimsend.v1 import opt_outs_pb2 as pb
from zimsend.v1 import opt_outs_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

log = logs.get("zimsend.opt_outs")
_SOURCE = {opt_outs.KEYWORD: pb.keyword, opt_outs.API: pb.api}


#: The servicer context of a unary RPC (request and response types erased).
Context = grpc.aio.ServicerContext[Any, Any]


class OptOutService(pb_grpc.OptOutServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @public_rpc
    async def ListOptOuts(
        self, request: pb.ListOptOutsRequest, context: Context, caller: Caller
    ) -> pb.ListOptOutsResponse:
        v = Violations()
        page = history.page_of(v, *paging(request))
        number = (
            opt_outs.number(v, "phone_number", request.phone_number)
            if request.phone_number.strip()
            else None
        )
        v.raise_if_any()
        listed = await self.state.db_call(
            _list, self.state.db, caller.client_id, page.number, page.limit, number
        )
        pages = (listed.total + page.limit - 1) // page.limit
        return pb.ListOptOutsResponse(
            success=True,
            opt_outs=[_opt_out(row) for row in listed.rows],
            pagination=common_pb2.Pagination(
                current_page=page.number,
                per_page=page.limit,
                total_pages=pages,
                total_items=listed.total,
            ),
        )

    @public_rpc
    async def AddOptOut(
        self, request: pb.AddOptOutRequest, context: Context, caller: Caller
    ) -> pb.AddOptOutResponse:
        v = Violations()
        number = opt_outs.number(v, "phone_number", request.phone_number)
        v.raise_if_any()
        assert number is not None
        row, created = await self.state.db_call(_add, self.state.db, caller.client_id, number)
        log.info("opt_outs.added", client_id=caller.client_id, created=created)
        return pb.AddOptOutResponse(success=True, opt_out=_opt_out(row), created=created)

    @public_rpc
    async def RemoveOptOut(
        self,
        request: pb.RemoveOptOutRequest,
        context: Context,
        caller: Caller,
    ) -> pb.RemoveOptOutResponse:
        v = Violations()
        number = opt_outs.number(v, "phone_number", request.phone_number)
        v.raise_if_any()
        assert number is not None
        removed = await self.state.db_call(_remove, self.state.db, caller.client_id, number)
        if not removed:
            raise ApiError.invalid(
                ErrorCode.OPT_OUT_NOT_FOUND,
                "phone_number",
                f"{number} is not on this client's opt-out list (GET /v1/opt-outs lists it)",
            )
        log.info("opt_outs.removed", client_id=caller.client_id)
        return pb.RemoveOptOutResponse(success=True, phone_number=number)


def _list(
    db: Database, client_id: str, page: int, limit: int, number: str | None
) -> opt_outs.Listed:
    with db.session() as session:
        return opt_outs.list_page(session, client_id, page=page, limit=limit, phone_number=number)


def _add(db: Database, client_id: str, number: str) -> tuple[OptOut, bool]:
    with db.write() as session:
        row, created = opt_outs.add(session, client_id, number, source=opt_outs.API)
        return row, created


def _remove(db: Database, client_id: str, number: str) -> bool:
    with db.write() as session:
        return opt_outs.remove(session, client_id, number, source=opt_outs.API)


def _opt_out(row: OptOut) -> pb.OptOut:
    return pb.OptOut(
        phone_number=row.phone_number,
        source=_SOURCE.get(row.source, pb.api),
        keyword=row.keyword or "",
        device_id=row.device_id or "",
        created_at=ts(row.created_at),
    )


def register(server: ZimSendServer) -> str:
    pb_grpc.add_OptOutServiceServicer_to_server(OptOutService(server.state), server.grpc_server)
    return "zimsend.v1.OptOutService"
