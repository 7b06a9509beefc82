"""AuthService: `GET /v1/auth/test` — do these credentials work, and is my device online?"""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from zimsend.server.auth import Caller
from zimsend.server.errors import ApiError, ErrorCode
from zimsend.server.presence import is_online
from zimsend.server.rpc import public_rpc
from zimsend.server.state import ServerState
from zimsend.server.storage import Database, Device, utcnow
from zimsend.v1 import auth_pb2 as pb
from zimsend.v1 import auth_pb2_grpc as pb_grpc
from zimsend.v1 import common_pb2

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer


class AuthService(pb_grpc.AuthServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @public_rpc
    async def AuthTest(
        self,
        request: pb.AuthTestRequest,
        context: grpc.aio.ServicerContext[pb.AuthTestRequest, pb.AuthTestResponse],
        caller: Caller,
    ) -> pb.AuthTestResponse:
        response = pb.AuthTestResponse(
            success=True, message="Authentication successful", client_id=caller.client_id
        )
        if caller.device_id:
            online = await self.state.db_call(
                _device_online,
                self.state.db,
                caller.client_id,
                caller.device_id,
                self.state.settings.offline_after_seconds,
            )
            response.device_id = caller.device_id
            response.device_status = common_pb2.online if online else common_pb2.offline
        # Without X-Device-ID, device_status stays unset (proto3 `optional`): REST omits it
        # instead of printing DEVICE_STATUS_UNSPECIFIED, which SPEC §2 does not allow.
        return response


def _device_online(db: Database, client_id: str, device_id: str, offline_after: float) -> bool:
    with db.session() as session:
        device = session.get(Device, device_id)
        if device is None or device.client_id != client_id or device.deleted_at is not None:
            raise ApiError.invalid(
                ErrorCode.INVALID_DEVICE_ID,
                "X-Device-ID",
                "X-Device-ID does not name one of this client's devices.",
            )
        return is_online(device, utcnow(), offline_after)


def register(server: ZimSendServer) -> str:
    pb_grpc.add_AuthServiceServicer_to_server(AuthService(server.state), server.grpc_server)
    return "zimsend.v1.AuthService"
