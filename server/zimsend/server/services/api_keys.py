"""ApiKeyService: create (secret shown once), list (last 4 characters only), revoke."""

from __future__ import annotations

from typing import TYPE_CHECKING

import grpc

from zimsend.server import accounts
from zimsend.server.auth import Caller
from zimsend.server.rpc import public_rpc
from zimsend.server.services.convert import ts
from zimsend.server.state import ServerState
from zimsend.server.storage import ApiKey
from zimsend.v1 import api_keys_pb2 as pb
from zimsend.v1 import api_keys_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer


class ApiKeyService(pb_grpc.ApiKeyServiceServicer):
    def __init__(self, state: ServerState) -> None:
        self.state = state

    @public_rpc
    async def CreateApiKey(
        self,
        request: pb.CreateApiKeyRequest,
        context: grpc.aio.ServicerContext[pb.CreateApiKeyRequest, pb.CreateApiKeyResponse],
        caller: Caller,
    ) -> pb.CreateApiKeyResponse:
        new = await self.state.db_call(
            accounts.create_api_key,
            self.state.db,
            self.state.pepper,
            caller.client_id,
            request.name,
            test=request.test,
        )
        return pb.CreateApiKeyResponse(
            success=True,
            key_id=new.key.id,
            name=new.key.name,
            api_key=new.secret,
            test=new.key.test,
            created_at=ts(new.key.created_at),
        )

    @public_rpc
    async def ListApiKeys(
        self,
        request: pb.ListApiKeysRequest,
        context: grpc.aio.ServicerContext[pb.ListApiKeysRequest, pb.ListApiKeysResponse],
        caller: Caller,
    ) -> pb.ListApiKeysResponse:
        keys = await self.state.db_call(accounts.list_api_keys, self.state.db, caller.client_id)
        return pb.ListApiKeysResponse(success=True, api_keys=[_key(k) for k in keys])

    @public_rpc
    async def RevokeApiKey(
        self,
        request: pb.RevokeApiKeyRequest,
        context: grpc.aio.ServicerContext[pb.RevokeApiKeyRequest, pb.RevokeApiKeyResponse],
        caller: Caller,
    ) -> pb.RevokeApiKeyResponse:
        key = await self.state.db_call(
            accounts.revoke_api_key, self.state.db, caller.client_id, request.key_id
        )
        self.state.verified_keys.forget(key.id)
        return pb.RevokeApiKeyResponse(success=True, key_id=key.id, revoked_at=ts(key.revoked_at))


def _key(key: ApiKey) -> pb.ApiKey:
    return pb.ApiKey(
        key_id=key.id,
        name=key.name,
        last4=key.last4,
        test=key.test,
        created_at=ts(key.created_at),
        last_used_at=ts(key.last_used_at),
        revoked_at=ts(key.revoked_at),
    )


def register(server: ZimSendServer) -> str:
    pb_grpc.add_ApiKeyServiceServicer_to_server(ApiKeyService(server.state), server.grpc_server)
    return "zimsend.v1.ApiKeyService"
