"""OtpService: send a one-time code by SMS, verify what the user typed (SPEC.md §6).

The servicer only translates: `zimsend.server.otp` checks, issues and verifies, in the database
thread pool. After an OTP's SMS is queued it wakes the dispatcher (`ServerState.new_work`), as
SendSms does, so the code leaves on the next dispatch round rather than the next poll.

Logs name the OTP and its message by id only: the code, the text that carries it and the code
a user typed never reach a log call (DESIGN "Security baseline").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from zimsend.server import logs, metrics
from zimsend.server.auth import Caller
from zimsend.server.otp import check_send, issue, verify
from zimsend.server.rpc import public_rpc
from zimsend.server.services.convert import ts
from zimsend.server.state import ServerState
from zimsend.server.storage import utcnow
from zimsend.v1 import otp_pb2 as pb
from zimsend.v1 import otp_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer

log = logs.get("zimsend.otp")


class OtpService(pb_grpc.OtpServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @public_rpc
    async def SendOtp(
        self,
        request: pb.SendOtpRequest,
        context: grpc.aio.ServicerContext[pb.SendOtpRequest, pb.SendOtpResponse],
        caller: Caller,
    ) -> pb.SendOtpResponse:
        plan = check_send(request)
        request_ref = caller.request_id
        issued = await self.state.db_call(
            issue,
            self.state.intake,
            self.state.pepper,
            client_id=caller.client_id,
            test=caller.test,
            device_header=caller.device_id,
            plan=plan,
            request_id=request_ref,
        )
        if issued.created:
            self.state.new_work.notify(caller.client_id)
            metrics.MESSAGES_ACCEPTED.inc()
        log.info(
            "otp.sent",
            request_id=request_ref,
            client_id=caller.client_id,
            otp_id=issued.otp_id,
            message_id=issued.message_id,
        )
        return issued.response

    @public_rpc
    async def VerifyOtp(
        self,
        request: pb.VerifyOtpRequest,
        context: grpc.aio.ServicerContext[pb.VerifyOtpRequest, pb.VerifyOtpResponse],
        caller: Caller,
    ) -> pb.VerifyOtpResponse:
        verdict = await self.state.db_call(
            verify,
            self.state.db,
            self.state.pepper,
            client_id=caller.client_id,
            otp_id=request.otp_id,
            code=request.code,
            now=utcnow(),
        )
        log.info(
            "otp.checked",
            client_id=caller.client_id,
            otp_id=request.otp_id.strip(),
            valid=verdict.valid,
        )
        return pb.VerifyOtpResponse(
            success=True,
            valid=verdict.valid,
            message=verdict.message,
            verified_at=ts(verdict.verified_at),
            attempts_remaining=verdict.attempts_remaining,
        )


def register(server: ZimSendServer) -> str:
    pb_grpc.add_OtpServiceServicer_to_server(OtpService(server.state), server.grpc_server)
    return "zimsend.v1.OtpService"
