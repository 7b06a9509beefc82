"""SettingsService: the client's sending policy, `GET` and `PATCH /v1/settings`
(docs/compliance.md).

PATCH semantics: each section present in the request (`opt_outs`, `quiet_hours`,
`max_send_attempts`) replaces that section whole, defaults for what it leaves empty; absent
sections stay as they are. Validation and storage: `zimsend.server.compliance.policy`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc

from zimsend.server import logs
from zimsend.server.auth import Caller
from zimsend.server.compliance import policy
from zimsend.server.rpc import public_rpc
from zimsend.server.services.convert import ts
from zimsend.server.state import ServerState
from zimsend.server.storage import Database
from zimsend.v1 import settings_pb2 as pb
from zimsend.v1 import settings_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

log = logs.get("zimsend.settings")


#: The servicer context of a unary RPC (request and response types erased).
Context = grpc.aio.ServicerContext[Any, Any]


class SettingsService(pb_grpc.SettingsServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @public_rpc
    async def GetSettings(
        self, request: pb.GetSettingsRequest, context: Context, caller: Caller
    ) -> pb.GetSettingsResponse:
        settings = await self.state.db_call(self._read, caller.client_id)
        return pb.GetSettingsResponse(success=True, settings=settings)

    @public_rpc
    async def UpdateSettings(
        self,
        request: pb.UpdateSettingsRequest,
        context: Context,
        caller: Caller,
    ) -> pb.UpdateSettingsResponse:
        opt_outs = quiet = None
        if request.HasField("opt_outs"):
            given = request.opt_outs
            opt_outs = policy.OptOutChange(
                list(given.stop_keywords), list(given.start_keywords), given.exempt_otp
            )
        if request.HasField("quiet_hours"):
            q = request.quiet_hours
            quiet = policy.QuietChange(q.enabled, q.start, q.end, q.fallback_time_zone)
        attempts = request.max_send_attempts if request.HasField("max_send_attempts") else None
        settings = await self.state.db_call(
            self._write, caller.client_id, opt_outs, quiet, attempts
        )
        log.info(
            "settings.updated",
            client_id=caller.client_id,
            sections=[
                name
                for name, given in (
                    ("opt_outs", opt_outs),
                    ("quiet_hours", quiet),
                    ("max_send_attempts", attempts),
                )
                if given is not None
            ],
        )
        return pb.UpdateSettingsResponse(success=True, settings=settings)

    def _read(self, client_id: str) -> pb.ClientSettings:
        db: Database = self.state.db
        with db.session() as session:
            return _view(
                policy.load(session, client_id),
                policy.max_send_attempts(session, client_id, self.state.settings.max_send_attempts),
            )

    def _write(
        self,
        client_id: str,
        opt_outs: policy.OptOutChange | None,
        quiet: policy.QuietChange | None,
        attempts: int | None,
    ) -> pb.ClientSettings:
        with self.state.db.write() as session:
            now = policy.update(
                session, client_id, opt_outs=opt_outs, quiet_hours=quiet, max_send_attempts=attempts
            )
            return _view(
                now,
                policy.max_send_attempts(session, client_id, self.state.settings.max_send_attempts),
            )


def _view(current: policy.Policy, attempts: int) -> pb.ClientSettings:
    return pb.ClientSettings(
        opt_outs=pb.OptOutSettings(
            stop_keywords=current.stop_keywords,
            start_keywords=current.start_keywords,
            exempt_otp=current.exempt_otp,
        ),
        quiet_hours=pb.QuietHours(
            enabled=current.quiet_hours_enabled,
            start=current.quiet_hours_start,
            end=current.quiet_hours_end,
            fallback_time_zone=current.quiet_hours_time_zone,
        ),
        max_send_attempts=attempts,
        update_time=ts(current.updated_at),
    )


def register(server: ZimSendServer) -> str:
    pb_grpc.add_SettingsServiceServicer_to_server(SettingsService(server.state), server.grpc_server)
    return "zimsend.v1.SettingsService"
