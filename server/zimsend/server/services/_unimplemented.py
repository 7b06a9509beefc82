"""Placeholder servicers for services a later issue implements: authenticate, then answer
UNIMPLEMENTED. Built from the descriptor so every RPC of the contract is present."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pool

from zimsend.server.rpc import public_rpc, public_stream_rpc

if TYPE_CHECKING:
    from zimsend.server.app import ZimSendServer


def register_unimplemented(server: ZimSendServer, service_name: str) -> str:
    from zimsend.server.services import _stubs

    module = _stubs.grpc_module(service_name)
    descriptor = descriptor_pool.Default().FindServiceByName(service_name)
    short = descriptor.name
    base = getattr(module, f"{short}Servicer")
    methods: dict[str, Any] = {"state": server.state}
    for method in descriptor.methods:
        if method.client_streaming:
            # DeviceLink authenticates phones itself (device credentials, not API keys).
            methods[method.name] = _streaming_unimplemented(method.name)
        elif method.server_streaming:
            methods[method.name] = public_stream_rpc(_stream_unimplemented(method.name))
        else:
            methods[method.name] = public_rpc(_unimplemented(method.name))
    servicer = type(f"Unimplemented{short}", (base,), methods)()
    getattr(module, f"add_{short}Servicer_to_server")(servicer, server.grpc_server)
    return service_name


def _unimplemented(name: str) -> Any:
    async def handler(
        self: Any, request: Any, context: grpc.aio.ServicerContext, caller: Any
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented yet")

    handler.__name__ = name
    return handler


def _stream_unimplemented(name: str) -> Any:
    async def handler(
        self: Any, request: Any, context: grpc.aio.ServicerContext, caller: Any
    ) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented yet")
        yield  # pragma: no cover - makes this an async generator

    handler.__name__ = name
    return handler


def _streaming_unimplemented(name: str) -> Any:
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} is not implemented yet")

    handler.__name__ = name
    return handler
