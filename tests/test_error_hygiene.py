"""Issue 12, items 4-7 and 11: every refusal is the JSON envelope with a message a person
understands, through the real Envoy and the real server.

- Oversized requests are 431/400 in the envelope, never 429 and never grpc core's text about
  header sizes; a valid request at SPEC's limits goes through, because Envoy's header limit and
  the server's gRPC metadata limit agree (common.proto `RequestLimit`).
- `GET /v1/auth/test` without X-Device-ID omits `device_status`.
- Error bodies are valid UTF-8 even when the caller's body is not.
- History paging outside its range is refused, naming the parameter and its range.
- Garbage protobuf over gRPC is INVALID_ARGUMENT without class names; an unknown HTTP method
  is the envelope; a phone stream that never says hello is closed after a short deadline.
"""

from __future__ import annotations

import json
import queue
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import grpc
import httpx
import pytest
from _sms import headers_of, message_of
from conftest import Admin, GatewayFactory, Stack

from zimsend.gateway import GatewayConfig
from zimsend.server.app import METADATA_LIMIT_BYTES
from zimsend.v1 import device_link_pb2, device_link_pb2_grpc

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
HELLO_TIMEOUT_SECONDS = 2
# What grpc core's own refusals say; none of it may reach a REST caller.
INTERNAL_WORDS = ("metadata size", "soft limit", "hard limit", "x-envoy", ":path", "<class")


@pytest.fixture(scope="module")
def zimsend_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A short hello deadline, so the silent-stream test takes seconds."""
    from _processes import zimsend_env as make_env
    from conftest import TEST_PEPPER

    return make_env(
        tmp_path_factory.mktemp("zimsend-data"),
        TEST_PEPPER,
        ZIMSEND_DEVICE_HELLO_TIMEOUT_SECONDS=str(HELLO_TIMEOUT_SECONDS),
    )


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        yield client


def envelope(response: httpx.Response, status: int, code: str = "INVALID_REQUEST") -> str:
    """Asserts SPEC §1's error object, in valid UTF-8 JSON, without internals; returns its
    message."""
    assert response.status_code == status, response.content[:500]
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = json.loads(response.content.decode("utf-8"))  # strict: invalid UTF-8 fails here
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["message"] == body["error"]["message"]
    assert [d["reason"] for d in body["details"] if d["@type"] == ERROR_INFO] == [code]
    assert response.headers["zimsend-error-code"] == code
    for word in INTERNAL_WORDS:
        assert word not in body["message"], body["message"]
    return str(body["message"])


# --- item 4: sizes ---------------------------------------------------------------------------


def test_envoy_and_server_header_limits_agree() -> None:
    """Envoy forwards the URL twice (`:path` before transcoding, `x-envoy-original-path`)."""
    assert METADATA_LIMIT_BYTES > 2 * GatewayConfig().max_request_header_bytes


@pytest.mark.parametrize("char", ["é", "😀"], ids=["accented", "four-byte"])
def test_a_search_at_specs_limit_succeeds_every_time(
    http: httpx.Client, stack: Stack, char: str
) -> None:
    """1,600 characters is SPEC's limit for `search`; percent-encoded, up to 19.2 KB of URL.
    grpc core's default metadata limit refused these at random (429 RATE_LIMIT_EXCEEDED)."""
    for _ in range(5):
        response = http.get("/v1/sms/history", params={"search": char * 1600}, headers=stack.auth)
        assert response.status_code == 200, response.text
        assert response.json()["success"] is True


def test_a_20000_character_message_id_is_a_400_naming_it(http: httpx.Client, stack: Stack) -> None:
    response = http.get(f"/v1/sms/status/msg_{'a' * 20_000}", headers=stack.auth)
    message = envelope(response, 400)
    assert "message_id" in message
    assert "64 characters" in message


def test_a_17_kb_idempotency_key_is_a_400_naming_it(http: httpx.Client, stack: Stack) -> None:
    response = http.post(
        "/v1/sms/send",
        json={"to": "+33612345678", "message": "hi"},
        headers={**stack.auth, "Idempotency-Key": "k" * 17_000},
    )
    message = envelope(response, 400)
    assert "idempotency_key" in message
    assert "1-255" in message


def test_a_100_kb_header_is_a_431_envelope(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/auth/test", headers={**stack.auth, "X-Padding": "p" * 100_000})
    message = envelope(response, 431)
    assert "32 KB" in message


def test_a_url_over_the_limit_is_a_431_envelope(http: httpx.Client, stack: Stack) -> None:
    response = http.get(f"/v1/sms/status/msg_{'a' * 40_000}", headers=stack.auth)
    envelope(response, 431)


def test_headers_the_server_refuses_are_431_not_a_rate_limit(
    gateway_factory: GatewayFactory, stack: Stack
) -> None:
    """An Envoy configured with more room than the server: grpc core refuses the metadata
    with RESOURCE_EXHAUSTED, and the Lua filter still answers 431, not 429."""
    envoy = gateway_factory(max_request_header_bytes=4 * METADATA_LIMIT_BYTES)
    # grpc core enforces its limit once its HTTP/2 settings are acknowledged: the first request
    # on each new upstream connection (Envoy has one per worker thread) can slip through.
    # Whatever gets through is a 200; what is refused must be the 431, never a 429.
    answers = []
    for _ in range(20):
        response = httpx.get(
            f"{envoy.base_url}/v1/auth/test",
            timeout=10,
            headers={**stack.auth, "X-Padding": "x" * (3 * METADATA_LIMIT_BYTES)},
        )
        answers.append(response.status_code)
        if response.status_code != 200:
            break
    assert set(answers) <= {200, 431}, answers
    assert answers[-1] == 431, answers
    message = envelope(response, 431)
    assert "retry-after" not in response.headers
    assert message.startswith("Request URL and headers are larger than the server accepts")


# --- item 5: device_status --------------------------------------------------------------------


def test_auth_test_without_a_device_omits_device_status(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/auth/test", headers=stack.auth)
    assert response.status_code == 200, response.text
    assert "device_status" not in response.json(), response.text


def test_auth_test_with_a_device_says_offline(
    http: httpx.Client, stack: Stack, admin: Admin
) -> None:
    device = admin("create-device", "--client-id", stack.client_id, "--name", "status-phone")
    response = http.get("/v1/auth/test", headers={**stack.auth, "X-Device-ID": device["device_id"]})
    assert response.status_code == 200, response.text
    assert response.json()["device_status"] == "offline"


# --- item 6: UTF-8 ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/api-keys", "/v1/devices", "/v1/sms/send"])
@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\xd8\x85\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9\xe9"}',
        b'{"name": "' + "é".encode() * 30 + b'" x}',
        b'{"name": "\xff\xfe\xfd"}',
        b"\xd8\x85\xc3",
    ],
    ids=["latin1", "cut-character", "bytes-ff", "not-json"],
)
def test_error_bodies_are_valid_utf8_whatever_the_request_body(
    http: httpx.Client, stack: Stack, path: str, body: bytes
) -> None:
    response = http.post(
        path, content=body, headers={**stack.auth, "content-type": "application/json"}
    )
    message = envelope(response, 400)
    assert message.startswith("Request body is not valid JSON"), message


# --- item 7: paging ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/sms/history", "/v1/sms/inbox"])
@pytest.mark.parametrize(
    ("param", "value", "expected"),
    [
        ("limit", 0, "limit: must be 1-100 (got 0)"),
        ("page", 0, "page: must be 1 or more (got 0)"),
    ],
)
def test_paging_out_of_range_is_refused_naming_the_parameter(
    http: httpx.Client, stack: Stack, path: str, param: str, value: int, expected: str
) -> None:
    response = http.get(path, params={param: value}, headers=stack.auth)
    assert envelope(response, 400) == expected


def test_paging_within_range_and_absent_still_works(http: httpx.Client, stack: Stack) -> None:
    default = http.get("/v1/sms/history", headers=stack.auth).json()
    assert default["pagination"]["per_page"] == 50
    assert default["pagination"]["current_page"] == 1
    given = http.get("/v1/sms/history", params={"limit": 1, "page": 1}, headers=stack.auth)
    assert given.json()["pagination"]["per_page"] == 1


# --- item 11: garbage protobuf, unknown method, silent phones ---------------------------------


@pytest.mark.parametrize("via", ["envoy", "direct"])
def test_garbage_protobuf_is_invalid_argument_without_class_names(stack: Stack, via: str) -> None:
    target = stack.envoy.grpc_target if via == "envoy" else stack.server_address
    with grpc.insecure_channel(target) as channel:
        send = channel.unary_unary(
            "/zimsend.v1.SmsService/SendSms",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        with pytest.raises(grpc.RpcError) as caught:
            send(b"\xff\xff\xff\xff\x0f\x01garbage", metadata=stack.metadata, timeout=5)
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert (
        error.details()
        == "The request is not a valid zimsend.v1.SendSmsRequest message (protobuf)."
    )
    assert headers_of(error)["zimsend-error-code"] == "INVALID_REQUEST"


def test_a_garbage_frame_on_a_phone_stream_is_invalid_argument(stack: Stack, admin: Admin) -> None:
    device = admin("create-device", "--client-id", stack.client_id, "--name", "garbage-phone")
    with grpc.insecure_channel(stack.envoy.device_target) as channel:
        connect = channel.stream_stream(
            "/zimsend.v1.DeviceLinkService/Connect",
            request_serializer=lambda raw: raw,
            response_deserializer=lambda raw: raw,
        )
        frames = iter([b"\xff\xff\xff\xff\x0f\x01garbage"])
        with pytest.raises(grpc.RpcError) as caught:
            list(connect(frames, metadata=_device_metadata(stack, device), timeout=10))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT, caught.value.details()
    assert "zimsend.v1.DeviceFrame" in message_of(caught.value)
    assert "<class" not in message_of(caught.value)


@pytest.mark.parametrize("method", ["QUERY", "FOO"])
def test_an_unknown_http_method_is_the_envelope(
    http: httpx.Client, stack: Stack, method: str
) -> None:
    response = http.request(method, "/v1/sms/history", headers=stack.auth)
    message = envelope(response, 400)
    assert "/v1/openapi.json" in message


def test_a_malformed_header_line_is_the_envelope(stack: Stack) -> None:
    address = urlsplit(stack.base_url)
    with socket.create_connection((address.hostname, address.port), timeout=5) as raw:
        raw.sendall(b"GET /v1/auth/test HTTP/1.1\r\nHost: x\r\nBad Header: \x01\r\n\r\n")
        reply = b""
        while chunk := raw.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b"content-type: application/json" in head.lower(), head
    assert json.loads(body.decode("utf-8"))["error"]["code"] == "INVALID_REQUEST"


def test_a_phone_that_never_says_hello_is_closed_after_the_deadline(
    stack: Stack, admin: Admin
) -> None:
    device = admin("create-device", "--client-id", stack.client_id, "--name", "silent-phone")
    silent: queue.SimpleQueue[Any] = queue.SimpleQueue()
    with grpc.insecure_channel(stack.envoy.device_target) as channel:
        stub = device_link_pb2_grpc.DeviceLinkServiceStub(channel)
        calls = [
            stub.Connect(
                iter(silent.get, None), metadata=_device_metadata(stack, device), timeout=30
            )
            for _ in range(10)
        ]
        started = time.monotonic()
        errors = []
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                next(call)
            errors.append(caught.value)
        took = time.monotonic() - started
        for _ in calls:
            silent.put(None)
    assert {e.code() for e in errors} == {grpc.StatusCode.DEADLINE_EXCEEDED}, errors
    assert HELLO_TIMEOUT_SECONDS - 0.5 < took < HELLO_TIMEOUT_SECONDS + 5, took
    assert f"No DeviceHello within {HELLO_TIMEOUT_SECONDS} s" in message_of(errors[0])


def test_a_phone_that_says_hello_in_time_is_welcomed(stack: Stack, admin: Admin) -> None:
    device = admin("create-device", "--client-id", stack.client_id, "--name", "prompt-phone")
    frames: queue.SimpleQueue[Any] = queue.SimpleQueue()
    with grpc.insecure_channel(stack.envoy.device_target) as channel:
        stub = device_link_pb2_grpc.DeviceLinkServiceStub(channel)
        call = stub.Connect(
            iter(frames.get, None), metadata=_device_metadata(stack, device), timeout=30
        )
        time.sleep(HELLO_TIMEOUT_SECONDS / 2)
        frames.put(device_link_pb2.DeviceFrame(hello=device_link_pb2.DeviceHello(model="x")))
        try:
            first = next(call)
        finally:
            call.cancel()
            frames.put(None)
    assert first.WhichOneof("frame") == "welcome"


def _device_metadata(stack: Stack, device: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    return (
        ("x-client-id", stack.client_id),
        ("x-device-id", device["device_id"]),
        ("x-device-password", device["device_password"]),
    )
