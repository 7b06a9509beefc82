"""The public REST API as a client sees it: the real Envoy transcoding to the real server.

SPEC.md §1: every error is ONE JSON object carrying ZimSend's envelope
(`success: false, error: {code, message}`) and grpc-gateway's status (`code, message,
details` with a google.rpc.ErrorInfo whose reason is the same code) — whether the server
raised it or Envoy refused the request itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from conftest import Stack

from zimsend.gateway import default_openapi_path

ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


@pytest.fixture(scope="module")
def http(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base_url, timeout=10) as client:
        yield client


def assert_error(
    response: httpx.Response, status: int, code: str, grpc_code: int
) -> dict[str, Any]:
    """The response is SPEC §1's error object; returns it."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["success"] is False
    assert body["error"]["code"] == code
    assert body["error"]["message"], body
    assert body["code"] == grpc_code
    assert body["message"] == body["error"]["message"]
    reasons = [d["reason"] for d in body["details"] if d["@type"] == ERROR_INFO]
    assert reasons == [code], body["details"]
    assert response.headers["zimsend-error-code"] == code
    return body


# --- success and server errors --------------------------------------------------------------


def test_auth_test_succeeds_with_the_key_and_client_id(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/auth/test", headers=stack.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert body["client_id"] == stack.client_id
    assert body["message"]
    assert "zimsend-error-code" not in response.headers


def test_a_wrong_key_is_401_invalid_api_key(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/auth/test", headers={**stack.auth, "X-API-Key": "zs_live_" + "0" * 40})
    body = assert_error(response, 401, "INVALID_API_KEY", 16)
    info = next(d for d in body["details"] if d["@type"] == ERROR_INFO)
    assert info["domain"] == "zimsend.dev"
    # The envelope comes first, as a ZimSend client reading the body top-down expects.
    assert list(body)[:2] == ["success", "error"]


def test_missing_headers_are_400_missing_auth_headers(http: httpx.Client) -> None:
    assert_error(http.get("/v1/auth/test"), 400, "MISSING_AUTH_HEADERS", 3)


def test_an_unknown_device_keeps_the_servers_field_details(
    http: httpx.Client, stack: Stack
) -> None:
    response = http.get("/v1/auth/test", headers={**stack.auth, "X-Device-ID": "device_nope"})
    body = assert_error(response, 404, "INVALID_DEVICE_ID", 5)
    bad = [d for d in body["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    assert bad
    assert bad[0]["field_violations"][0]["field"] == "X-Device-ID"


# --- Envoy's own refusals, in the same envelope ---------------------------------------------


def test_malformed_json_is_a_400_envelope_not_text(http: httpx.Client, stack: Stack) -> None:
    response = http.post("/v1/sms/send", headers=stack.auth, content=b"{not json")
    body = assert_error(response, 400, "INVALID_REQUEST", 3)
    assert body["message"].startswith("Request body is not valid JSON: ")


def test_a_wrong_json_type_names_the_field(http: httpx.Client, stack: Stack) -> None:
    response = http.post("/v1/sms/send", headers=stack.auth, json={"to": 33612345678})
    body = assert_error(response, 400, "INVALID_REQUEST", 3)
    assert "`to`" in body["message"]
    assert "string" in body["message"]


def test_a_body_that_is_not_an_object_is_refused(http: httpx.Client, stack: Stack) -> None:
    response = http.post("/v1/sms/send", headers=stack.auth, json=["+33612345678"])
    body = assert_error(response, 400, "INVALID_REQUEST", 3)
    assert "JSON object" in body["message"]


def test_an_unknown_priority_name_is_invalid_priority(http: httpx.Client, stack: Stack) -> None:
    response = http.post(
        "/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612345678", "message": "hi", "priority": "super"},
    )
    body = assert_error(response, 400, "INVALID_PRIORITY", 3)
    assert "`priority`" in body["message"]
    assert "very_low" in body["message"]


def test_an_unknown_path_is_a_404_envelope(http: httpx.Client, stack: Stack) -> None:
    body = assert_error(http.get("/v1/nope", headers=stack.auth), 404, "NOT_FOUND", 5)
    assert "GET /v1/nope" in body["message"]
    # The path as sent, without its query (Envoy's local reply writes it, gateway/README.md).
    body = assert_error(http.get("/v1/nope?q=1", headers=stack.auth), 404, "NOT_FOUND", 5)
    assert body["message"].startswith("No endpoint GET /v1/nope; "), body["message"]


def test_a_known_path_with_the_wrong_method_is_a_404_envelope(
    http: httpx.Client, stack: Stack
) -> None:
    body = assert_error(http.put("/v1/auth/test", headers=stack.auth), 404, "NOT_FOUND", 5)
    assert "PUT /v1/auth/test" in body["message"]


def test_an_unknown_query_parameter_is_named(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/auth/test", params={"verbose": "1"}, headers=stack.auth)
    body = assert_error(response, 400, "INVALID_REQUEST", 3)
    assert "`verbose`" in body["message"]


def test_a_bad_query_value_says_what_is_expected(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/sms/history", params={"limit": "many"}, headers=stack.auth)
    body = assert_error(response, 400, "INVALID_REQUEST", 3)
    assert "`limit`" in body["message"]
    assert "integer" in body["message"]


def test_a_body_over_one_megabyte_is_413(http: httpx.Client, stack: Stack) -> None:
    text = "a" * (1024 * 1024 + 10)
    response = http.post(
        "/v1/sms/send", headers=stack.auth, json={"to": "+33612345678", "message": text}
    )
    body = assert_error(response, 413, "INVALID_REQUEST", 3)
    assert "1048576 bytes" in body["message"]


def test_a_chunked_body_over_the_limit_is_413_too(http: httpx.Client, stack: Stack) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"to": "+33612345678", "message": "'
        for _ in range(1100):
            yield b"a" * 1024
        yield b'"}'

    response = http.post("/v1/sms/send", headers=stack.auth, content=chunks())
    assert_error(response, 413, "INVALID_REQUEST", 3)


# --- edge services --------------------------------------------------------------------------


def test_healthz_is_200_while_the_server_is_healthy(http: httpx.Client) -> None:
    assert http.get("/healthz").status_code == 200


def test_cors_preflight_allows_the_zimsend_headers(http: httpx.Client) -> None:
    response = http.options(
        "/v1/sms/send",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-api-key, x-client-id, x-device-id, "
            "idempotency-key, content-type",
        },
    )
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    allowed = {h.strip() for h in response.headers["access-control-allow-headers"].split(",")}
    assert {"x-api-key", "x-client-id", "x-device-id", "idempotency-key"} <= allowed
    assert "POST" in response.headers["access-control-allow-methods"]


def test_cors_headers_on_a_real_response(http: httpx.Client, stack: Stack) -> None:
    response = http.get("/v1/auth/test", headers={**stack.auth, "Origin": "https://x.example"})
    assert response.headers["access-control-allow-origin"] == "https://x.example"
    assert "retry-after" in response.headers["access-control-expose-headers"]


def test_openapi_json_is_the_generated_document(http: httpx.Client) -> None:
    response = http.get("/v1/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == default_openapi_path().read_bytes()
    assert http.post("/v1/openapi.json").status_code == 404


def _operations() -> list[tuple[str, str, dict[str, Any]]]:
    document = json.loads(default_openapi_path().read_text())
    return [
        (method.upper(), path, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in ("get", "post", "put", "patch", "delete")
    ]


def _example(parameter: dict[str, Any], document: dict[str, Any]) -> str:
    schema = parameter.get("schema", {})
    if "anyOf" in schema:  # an enum: its first value name
        ref = next(s["$ref"] for s in schema["anyOf"] if "$ref" in s)
        enum = document["components"]["schemas"][ref.rsplit("/", 1)[1]]
        return str(next(v for v in enum["enum"] if not str(v).endswith("UNSPECIFIED")))
    return {"integer": "1", "boolean": "true"}.get(schema.get("type", "string"), "x")


def test_every_documented_operation_and_query_parameter_is_served(http: httpx.Client) -> None:
    """The OpenAPI document matches the gateway: each documented method and path reaches the
    server (without credentials: MISSING_AUTH_HEADERS, never Envoy's NOT_FOUND), and each
    documented query parameter is accepted by the transcoder."""
    document = json.loads(default_openapi_path().read_text())
    operations = _operations()
    assert len(operations) >= 20
    for method, path, operation in operations:
        params = {
            p["name"]: _example(p, document)
            for p in operation.get("parameters", [])
            if p.get("in") == "query"
        }
        url = re.sub(r"\{[^}]+\}", "x1", path)
        body = b"{}" if "requestBody" in operation else None
        response = http.request(method, url, params=params, content=body)
        assert response.headers.get("zimsend-error-code") == "MISSING_AUTH_HEADERS", (
            method,
            path,
            params,
            response.status_code,
            response.text,
        )


def test_a_plus_in_the_query_is_a_space_except_before_a_number(
    http: httpx.Client, stack: Stack
) -> None:
    """Forms, httpx and requests write a space as `+`; a person types `to=+336…` as is."""
    import datetime as dt

    later = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    sent = http.post(
        "/v1/sms/send",
        headers=stack.auth,
        json={"to": "+33612340099", "message": "big world plus+sign", "scheduled_at": later},
    )
    assert sent.status_code == 200, sent.text
    message_id = sent.json()["message_id"]

    def found(query: str) -> list[str]:
        response = httpx.get(
            f"{stack.base_url}/v1/sms/history?{query}", headers=stack.auth, timeout=10
        )
        assert response.status_code == 200, response.text
        return [m["message_id"] for m in response.json()["data"]]

    assert message_id in found("search=big+world")  # a space written as +
    assert message_id in found("search=plus%2Bsign")  # an encoded plus stays a plus
    assert message_id in found("to=+33612340099")  # an E.164 number typed as is
    assert message_id in found("to=%2B33612340099&search=big+world")
    assert message_id not in found("search=big+planet")
