"""The edge itself, through the real Envoy and the real server: native gRPC on the public
port, the phones' port, gRPC-Web, the per-key flood limit, TLS, the access log, and what
happens when no server is healthy."""

from __future__ import annotations

import json
import queue
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from _certs import self_signed
from _sms import error_reason, headers_of, message_of, retry_delay, status_detail
from conftest import Admin, GatewayFactory, Stack
from google.rpc import error_details_pb2

from zimsend.gateway import EnvoyProcess, RateLimit, start_envoy
from zimsend.v1 import auth_pb2, auth_pb2_grpc, device_link_pb2, device_link_pb2_grpc

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def access_log(envoy: EnvoyProcess, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
    """The access log entry of one request (Envoy flushes the log every 250 ms)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in envoy.access_log_path.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            if entry["request_id"] == request_id:
                return entry
        time.sleep(0.05)
    raise AssertionError(f"no access log entry for {request_id}")


def device_connect(
    target: str, credentials: grpc.ChannelCredentials | None = None, request_id: str = ""
) -> grpc.RpcError:
    """Open the phones' stream with no device credentials; returns how it ended."""
    channel = (
        grpc.secure_channel(target, credentials) if credentials else grpc.insecure_channel(target)
    )
    with channel:
        stub = device_link_pb2_grpc.DeviceLinkServiceStub(channel)
        frames = iter([device_link_pb2.DeviceFrame(hello=device_link_pb2.DeviceHello())])
        with pytest.raises(grpc.RpcError) as caught:
            for _ in stub.Connect(frames, timeout=5, metadata=(("x-request-id", request_id),)):
                pass
        return caught.value


# --- native gRPC on the public port ---------------------------------------------------------


@pytest.mark.parametrize("via", ["envoy", "direct"])
def test_grpc_clients_reach_auth_test_through_envoy_and_directly(stack: Stack, via: str) -> None:
    target = stack.envoy.grpc_target if via == "envoy" else stack.server_address
    with grpc.insecure_channel(target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        reply = stub.AuthTest(auth_pb2.AuthTestRequest(), metadata=stack.metadata, timeout=5)
        assert reply.success
        assert reply.client_id == stack.client_id

        with pytest.raises(grpc.RpcError) as caught:
            stub.AuthTest(
                auth_pb2.AuthTestRequest(),
                timeout=5,
                metadata=(("x-api-key", "zs_live_wrong"), ("x-client-id", stack.client_id)),
            )
    error = caught.value
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert not message_of(error).lstrip().startswith("{"), "gRPC callers never get JSON"
    assert error_reason(error) == "INVALID_API_KEY"
    assert status_detail(error, error_details_pb2.RetryInfo) is None
    assert headers_of(error)["zimsend-error-code"] == "INVALID_API_KEY"


def test_grpc_web_clients_are_served(stack: Stack) -> None:
    message = auth_pb2.AuthTestRequest().SerializeToString()
    response = httpx.post(
        f"{stack.base_url}/zimsend.v1.AuthService/AuthTest",
        content=b"\x00" + struct.pack(">I", len(message)) + message,
        headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", **stack.auth},
        timeout=5,
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/grpc-web")
    body = response.content
    length = struct.unpack(">I", body[1:5])[0]
    reply = auth_pb2.AuthTestResponse.FromString(body[5 : 5 + length])
    assert reply.client_id == stack.client_id
    trailers = body[5 + length :]
    assert trailers[0] == 0x80
    assert b"grpc-status:0" in trailers


# --- the phones' stream ---------------------------------------------------------------------


def test_the_device_stream_goes_through_the_device_port(stack: Stack) -> None:
    error = device_connect(stack.envoy.device_target, request_id="device-port-1")
    entry = access_log(stack.envoy, "device-port-1")
    assert entry["listener"] == "device"
    assert entry["upstream_host"] == stack.server_address, entry
    assert "device port" not in message_of(error)


def test_a_paired_phone_gets_its_welcome_through_the_device_port(
    stack: Stack, admin: Admin
) -> None:
    device = admin("create-device", "--client-id", stack.client_id, "--name", "edge-phone")
    metadata = (
        ("x-client-id", stack.client_id),
        ("x-device-id", device["device_id"]),
        ("x-device-password", device["device_password"]),
    )
    hello = device_link_pb2.DeviceFrame(
        hello=device_link_pb2.DeviceHello(model="Pixel 7", android_version="14", app_version="1")
    )
    with grpc.insecure_channel(stack.envoy.device_target) as channel:
        stub = device_link_pb2_grpc.DeviceLinkServiceStub(channel)
        frames: queue.SimpleQueue[device_link_pb2.DeviceFrame | None] = queue.SimpleQueue()
        frames.put(hello)
        call = stub.Connect(iter(frames.get, None), metadata=metadata, timeout=10)
        try:
            first = next(call)
        finally:
            call.cancel()
            frames.put(None)  # ends the request iterator
    assert first.WhichOneof("frame") == "welcome"
    assert first.welcome.device_id == device["device_id"]


def test_the_device_stream_is_not_on_the_public_port(stack: Stack) -> None:
    error = device_connect(stack.envoy.grpc_target, request_id="public-port-1")
    assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "device port" in message_of(error)
    assert access_log(stack.envoy, "public-port-1")["upstream_host"] is None

    rest = httpx.post(
        f"{stack.base_url}/zimsend.v1.DeviceLinkService/Connect",
        json={},
        headers=stack.auth,
        timeout=5,
    )
    assert rest.status_code == 404
    assert rest.json()["error"]["code"] == "NOT_FOUND"


def test_the_device_port_serves_nothing_else(stack: Stack) -> None:
    with grpc.insecure_channel(stack.envoy.device_target) as channel:
        with pytest.raises(grpc.RpcError) as caught:
            auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
                auth_pb2.AuthTestRequest(), metadata=stack.metadata, timeout=5
            )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


# --- flood protection -----------------------------------------------------------------------


def test_the_per_key_rate_limit_answers_429_with_retry_after(
    stack: Stack, gateway_factory: GatewayFactory
) -> None:
    envoy = gateway_factory(rate_limit=RateLimit(requests_per_minute=2))
    url = f"{envoy.base_url}/v1/auth/test"
    with httpx.Client(timeout=5) as http:
        assert [http.get(url, headers=stack.auth).status_code for _ in range(2)] == [200, 200]
        limited = http.get(url, headers=stack.auth)
        # Buckets are per key: another key (even a wrong one) still reaches the server.
        other = http.get(url, headers={**stack.auth, "X-API-Key": "zs_live_other"})
    assert limited.status_code == 429
    assert limited.headers["content-type"] == "application/json"
    assert limited.headers["retry-after"] == "30"
    body = limited.json()
    assert body["success"] is False
    assert body["error"]["code"] == "RATE_LIMIT_EXCEEDED"
    assert body["code"] == 8
    assert body["message"] == body["error"]["message"]
    assert {d["@type"].rsplit(".", 1)[1] for d in body["details"]} == {"ErrorInfo", "RetryInfo"}
    assert "grpc-status-details-bin" not in limited.headers
    assert other.status_code == 401

    # Native gRPC callers share the same buckets and get RESOURCE_EXHAUSTED with RetryInfo.
    with grpc.insecure_channel(envoy.grpc_target) as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.AuthTest(auth_pb2.AuthTestRequest(), metadata=stack.metadata, timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert not message_of(caught.value).startswith("{")
    assert error_reason(caught.value) == "RATE_LIMIT_EXCEEDED"
    assert retry_delay(caught.value) == 30.0


# --- TLS ------------------------------------------------------------------------------------


def test_tls_on_both_listeners(
    stack: Stack, gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    envoy = gateway_factory(tls_cert=cert, tls_key=key)
    assert envoy.base_url.startswith("https://")

    response = httpx.get(
        f"{envoy.base_url}/v1/auth/test",
        headers=stack.auth,
        verify=ssl.create_default_context(cafile=cert),
        timeout=5,
    )
    assert response.status_code == 200
    assert response.json()["client_id"] == stack.client_id
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://{envoy.grpc_target}/healthz", timeout=5)

    credentials = grpc.ssl_channel_credentials(cert.read_bytes())
    with grpc.secure_channel(envoy.grpc_target, credentials) as channel:
        reply = auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
            auth_pb2.AuthTestRequest(), metadata=stack.metadata, timeout=5
        )
    assert reply.client_id == stack.client_id
    device_connect(envoy.device_target, credentials, request_id="tls-device-1")
    assert access_log(envoy, "tls-device-1")["upstream_host"] == stack.server_address


# --- logs and health ------------------------------------------------------------------------


def test_every_request_is_one_json_access_log_line(stack: Stack) -> None:
    response = httpx.get(
        f"{stack.base_url}/v1/auth/test?x=1",
        timeout=5,
        headers={**stack.auth, "X-Request-ID": "log-test-1"},
    )
    assert response.status_code == 400
    httpx.get(
        f"{stack.base_url}/v1/auth/test",
        timeout=5,
        headers={**stack.auth, "X-Request-ID": "log-test-2"},
    )

    refused = access_log(stack.envoy, "log-test-1")
    assert refused["method"] == "GET"
    assert refused["path"] == "/v1/auth/test?x=1"
    assert refused["status"] == 400
    assert refused["error_code"] == "INVALID_REQUEST"
    assert refused["upstream_host"] is None

    served = access_log(stack.envoy, "log-test-2")
    assert served["method"] == "GET"
    assert served["path"] == "/v1/auth/test"
    assert served["upstream_path"] == "/zimsend.v1.AuthService/AuthTest"
    assert served["grpc_status"] == "OK"
    assert served["response_flags"] == "-"
    assert served["upstream_host"] == stack.server_address
    assert isinstance(served["duration_ms"], int)


def test_without_a_healthy_server_healthz_is_503_and_calls_unavailable(tmp_path: Path) -> None:
    from _processes import free_port

    with start_envoy(
        directory=tmp_path,
        upstreams=(f"127.0.0.1:{free_port()}",),
        public_port=0,
        device_port=0,
        admin_port=0,
    ) as envoy:
        assert httpx.get(f"{envoy.base_url}/healthz", timeout=5).status_code == 503
        response = httpx.get(f"{envoy.base_url}/v1/auth/test", timeout=5)
        assert response.status_code == 503
        body = response.json()
        assert body["success"] is False
        assert body["error"]["code"] == "UNAVAILABLE"
        assert body["code"] == 14
        with grpc.insecure_channel(envoy.grpc_target) as channel:
            with pytest.raises(grpc.RpcError) as caught:
                auth_pb2_grpc.AuthServiceStub(channel).AuthTest(
                    auth_pb2.AuthTestRequest(), timeout=5
                )
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert not message_of(caught.value).startswith("{")
