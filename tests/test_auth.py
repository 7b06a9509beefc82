"""Authentication and the server skeleton, against a real `zimsend serve` process.

SPEC.md §2: every request carries X-API-Key and X-Client-ID (gRPC metadata x-api-key,
x-client-id); failures use the codes of §10 with a google.rpc.ErrorInfo naming them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import pytest
from _sms import error_reason, message_of
from conftest import Admin, RunningServer
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from zimsend.gateway import default_descriptor_path
from zimsend.v1 import (
    api_keys_pb2,
    api_keys_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
)

# Every service of the protos, read from the descriptor set: each one must be served (there is
# no placeholder answering UNIMPLEMENTED), so a new service without its servicer fails here.
DESCRIPTORS = descriptor_pb2.FileDescriptorSet.FromString(default_descriptor_path().read_bytes())
ZIMSEND_SERVICES = {
    f"{file.package}.{service.name}"
    for file in DESCRIPTORS.file
    if file.package == "zimsend.v1"
    for service in file.service
}
PUBLIC_SERVICES = ZIMSEND_SERVICES - {"zimsend.v1.DeviceLinkService"}


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    _, address = server
    with grpc.insecure_channel(address) as ch:
        yield ch


class Credentials(NamedTuple):
    """A client of the module's server and one live API key of it."""

    client_id: str
    api_key: str
    key_id: str


@pytest.fixture(scope="module")
def client(admin: Admin) -> Credentials:
    created = admin("create-client", "--name", "acme")
    key = admin("create-key", "--client-id", created["client_id"], "--name", "backend")
    return Credentials(created["client_id"], key["api_key"], key["key_id"])


def creds(client_id: str, api_key: str) -> tuple[tuple[str, str], ...]:
    return (("x-api-key", api_key), ("x-client-id", client_id))


def test_created_key_authenticates(channel: grpc.Channel, client: Credentials) -> None:
    client_id, api_key, _ = client
    reply = auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
        auth_pb2.AuthTestRequest(), metadata=creds(client_id, api_key), timeout=5
    )
    assert reply.success is True
    assert reply.client_id == client_id


def test_key_is_stored_only_as_hash(client: Credentials, zimsend_env: dict[str, str]) -> None:
    _, api_key, _ = client
    assert api_key.startswith("zs_live_")
    db_file = Path(zimsend_env["ZIMSEND_DATA_DIR"]) / "zimsend.db"
    raw = b"".join(p.read_bytes() for p in db_file.parent.glob("zimsend.db*"))
    assert api_key.encode() not in raw
    with sqlite3.connect(db_file) as conn:
        dump = "\n".join(conn.iterdump())
    assert api_key not in dump
    assert api_key[-4:] in dump  # last4 is kept to recognise the key in lists


@pytest.mark.parametrize(
    ("metadata", "missing"),
    [
        ((), "X-API-Key, X-Client-ID"),
        ((("x-client-id", "client_x"),), "X-API-Key"),
        ((("x-api-key", "zs_live_x"),), "X-Client-ID"),
    ],
)
def test_missing_headers(
    channel: grpc.Channel, metadata: tuple[tuple[str, str], ...], missing: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
            auth_pb2.AuthTestRequest(), metadata=metadata, timeout=5
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(info.value) == "MISSING_AUTH_HEADERS"
    assert missing in message_of(info.value)


def test_wrong_key(channel: grpc.Channel, client: Credentials) -> None:
    client_id, api_key, _ = client
    wrong = api_key[:-1] + ("y" if api_key.endswith("x") else "x")  # one character changed
    with pytest.raises(grpc.RpcError) as info:
        auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
            auth_pb2.AuthTestRequest(), metadata=creds(client_id, wrong), timeout=5
        )
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_reason(info.value) == "INVALID_API_KEY"
    assert api_key not in message_of(info.value)


def test_key_of_another_client(channel: grpc.Channel, client: Credentials, admin: Admin) -> None:
    _, api_key, _ = client
    other = admin("create-client", "--name", "other")
    with pytest.raises(grpc.RpcError) as info:
        auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
            auth_pb2.AuthTestRequest(), metadata=creds(other["client_id"], api_key), timeout=5
        )
    assert error_reason(info.value) == "INVALID_API_KEY"


def test_revoked_key_fails_on_next_request(
    channel: grpc.Channel, client: Credentials, admin: Admin
) -> None:
    client_id, api_key, _ = client
    stub = api_keys_pb2_grpc.ApiKeyServiceStub(channel)
    second = stub.CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(name="to revoke"), metadata=creds(client_id, api_key)
    )
    assert second.api_key.startswith("zs_live_")
    assert second.api_key != api_key
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    auth.AuthTest(auth_pb2.AuthTestRequest(), metadata=creds(client_id, second.api_key))
    stub.RevokeApiKey(
        api_keys_pb2.RevokeApiKeyRequest(key_id=second.key_id), metadata=creds(client_id, api_key)
    )
    with pytest.raises(grpc.RpcError) as info:
        auth.AuthTest(auth_pb2.AuthTestRequest(), metadata=creds(client_id, second.api_key))
    assert error_reason(info.value) == "INVALID_API_KEY"
    listed = stub.ListApiKeys(api_keys_pb2.ListApiKeysRequest(), metadata=creds(client_id, api_key))
    by_id = {k.key_id: k for k in listed.api_keys}
    assert by_id[second.key_id].HasField("revoked_at")
    assert by_id[second.key_id].last4 == second.api_key[-4:]
    assert all(second.api_key not in str(k) for k in listed.api_keys)


def test_test_keys_have_the_sandbox_prefix(channel: grpc.Channel, client: Credentials) -> None:
    client_id, api_key, _ = client
    reply = api_keys_pb2_grpc.ApiKeyServiceStub(channel).CreateApiKey(
        api_keys_pb2.CreateApiKeyRequest(name="sandbox", test=True),
        metadata=creds(client_id, api_key),
    )
    assert reply.api_key.startswith("zs_test_")
    assert reply.test


def test_keys_of_another_client_cannot_be_revoked(
    channel: grpc.Channel, client: Credentials, admin: Admin
) -> None:
    client_id, api_key, key_id = client
    other = admin("create-client", "--name", "intruder")
    other_key = admin("create-key", "--client-id", other["client_id"])
    with pytest.raises(grpc.RpcError) as info:
        api_keys_pb2_grpc.ApiKeyServiceStub(channel).RevokeApiKey(
            api_keys_pb2.RevokeApiKeyRequest(key_id=key_id),
            metadata=creds(other["client_id"], other_key["api_key"]),
        )
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
        auth_pb2.AuthTestRequest(), metadata=creds(client_id, api_key)
    )


def test_every_public_rpc_requires_auth(channel: grpc.Channel) -> None:
    """No public RPC answers without credentials."""
    pool = descriptor_pool.DescriptorPool()
    for file in DESCRIPTORS.file:  # dependencies come first
        pool.Add(file)
    checked = 0
    for service_name in sorted(PUBLIC_SERVICES):
        service = pool.FindServiceByName(service_name)
        for method in service.methods:
            from google.protobuf import message_factory

            request_cls = message_factory.GetMessageClass(method.input_type)
            response_cls = message_factory.GetMessageClass(method.output_type)
            path = f"/{service.full_name}/{method.name}"
            if method.server_streaming:
                stream = channel.unary_stream(
                    path,
                    request_serializer=request_cls.SerializeToString,
                    response_deserializer=response_cls.FromString,
                )
                with pytest.raises(grpc.RpcError) as info:
                    list(stream(request_cls(), timeout=5))
            else:
                call = channel.unary_unary(
                    path,
                    request_serializer=request_cls.SerializeToString,
                    response_deserializer=response_cls.FromString,
                )
                with pytest.raises(grpc.RpcError) as info:
                    call(request_cls(), timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, path
            assert error_reason(info.value) == "MISSING_AUTH_HEADERS", path
            checked += 1
    assert checked >= 28  # the 28 RPCs of the first six public services, and any added since


def test_health_reports_serving(channel: grpc.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    for name in ["", *sorted(ZIMSEND_SERVICES)]:
        reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING, name


def test_reflection_lists_every_service(channel: grpc.Channel) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    replies = stub.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = {s.name for reply in replies for s in reply.list_services_response.service}
    assert ZIMSEND_SERVICES <= names
    assert "grpc.health.v1.Health" in names
