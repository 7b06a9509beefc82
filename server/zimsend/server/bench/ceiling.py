"""The ceiling: what grpc.aio itself costs, with nothing of ZimSend behind it.

    python -m zimsend.server.bench.ceiling --port 50100

A process set up exactly like `zimsend serve` (uvloop, `SERVER_OPTIONS`, the health service)
whose SmsService.SendSms answers a fixed SendSmsResponse without authentication, validation or
storage. The load generator sends it the same requests with the same metadata and concurrency
as the real server, so "SendSms reaches 45 % of the ceiling" compares ZimSend's work with the
framework's floor on the same machine at the same moment.
"""

from __future__ import annotations

import argparse
import asyncio

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from zimsend.server.app import SERVER_OPTIONS
from zimsend.v1 import common_pb2, sms_pb2, sms_pb2_grpc


class TrivialSms(sms_pb2_grpc.SmsServiceServicer):
    async def SendSms(  # noqa: N802 - gRPC method name
        self,
        request: sms_pb2.SendSmsRequest,
        context: grpc.aio.ServicerContext[sms_pb2.SendSmsRequest, sms_pb2.SendSmsResponse],
    ) -> sms_pb2.SendSmsResponse:
        return sms_pb2.SendSmsResponse(
            success=True,
            message_id="msg_0000000000000000",
            status=common_pb2.queued,
            to=request.to,
        )


async def serve(port: int) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    # Only SendSms is measured; the other methods answer UNIMPLEMENTED, as the base class does
    # (the stubs declare them abstract).
    sms_pb2_grpc.add_SmsServiceServicer_to_server(TrivialSms(), server)  # type: ignore[abstract]
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    port = parser.parse_args().port
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a server dependency on Linux
        asyncio.run(serve(port))
    else:
        uvloop.run(serve(port))


if __name__ == "__main__":
    cli()
