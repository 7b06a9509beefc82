"""The OpenAPI document describes the REST API that SPEC.md promises and Envoy serves.

The expected routes are copied from SPEC.md by hand on purpose: the document is generated from
the protos, so comparing it with the protos would prove nothing about the contract.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from google.api import annotations_pb2
from google.protobuf import descriptor_pb2
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate

from zimsend.buildtools import codegen

PACKAGE_DIR = codegen.PROTOS / codegen.PACKAGE
DOC: dict[str, Any] = json.loads((PACKAGE_DIR / codegen.OPENAPI).read_text())
METHODS = {"get", "put", "post", "delete", "patch"}

SPEC_ROUTES = [
    # §2 Authentication, and its management paths
    ("GET", "/v1/auth/test"),
    ("POST", "/v1/devices"),
    ("GET", "/v1/devices"),
    ("GET", "/v1/devices/{device_id}"),
    ("PATCH", "/v1/devices/{device_id}"),
    ("DELETE", "/v1/devices/{device_id}"),
    ("POST", "/v1/devices/{device_id}/rotate-password"),
    ("POST", "/v1/api-keys"),
    ("GET", "/v1/api-keys"),
    ("DELETE", "/v1/api-keys/{key_id}"),
    ("GET", "/v1/sms/inbox"),
    # §3 SMS
    ("POST", "/v1/sms/send"),
    ("POST", "/v1/sms/send-bulk"),
    ("POST", "/v1/sms/send-bulk-personalized"),
    ("GET", "/v1/sms/status/{message_id}"),
    ("GET", "/v1/sms/history"),
    ("GET", "/v1/sms/stats"),
    ("DELETE", "/v1/sms/{message_id}"),
    ("POST", "/v1/sms/{message_id}/resend"),
    # §4 History export
    ("GET", "/v1/sms/history:export"),
    # §6 OTP
    ("POST", "/v1/sms/send-otp"),
    ("POST", "/v1/sms/verify-otp"),
    # §7 Webhooks
    ("POST", "/v1/webhooks/configure"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/logs"),
    ("POST", "/v1/webhooks/{webhook_id}/test"),
    ("DELETE", "/v1/webhooks/{webhook_id}"),
]


def operations() -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in DOC["paths"].items()
        for method, op in item.items()
        if method in METHODS
    ]


def schema_validator(component: str) -> OAS31Validator:
    """A JSON Schema validator for one component, resolving `#/components/...` in DOC."""
    schema = {"$ref": f"#/components/schemas/{component}", "components": DOC["components"]}
    return OAS31Validator(schema)


def test_document_is_valid_openapi_3_1() -> None:
    validate(DOC)
    assert DOC["openapi"].startswith("3.1")


@pytest.mark.parametrize(("method", "path"), SPEC_ROUTES, ids=[f"{m} {p}" for m, p in SPEC_ROUTES])
def test_spec_route_is_documented(method: str, path: str) -> None:
    assert method.lower() in DOC["paths"].get(path, {}), f"{method} {path} missing"


def test_document_and_descriptor_set_have_the_same_routes() -> None:
    """Envoy serves what the descriptor set's http rules say; the document must list exactly
    those."""
    fds = descriptor_pb2.FileDescriptorSet.FromString(
        (PACKAGE_DIR / codegen.DESCRIPTOR_SET).read_bytes()
    )
    served = set()
    for file in fds.file:
        if file.package != "zimsend.v1":
            continue
        for service in file.service:
            for method in service.method:
                if method.options.HasExtension(annotations_pb2.http):
                    rule = method.options.Extensions[annotations_pb2.http]
                    verb = rule.WhichOneof("pattern")
                    served.add((verb, re.sub(r"\{([^}=]+)=[^}]*\}", r"{\1}", getattr(rule, verb))))
    assert served == {(method, path) for method, path, _ in operations()}


def test_path_parameters_match_the_templates() -> None:
    for method, path, op in operations():
        declared = {p["name"] for p in op.get("parameters", []) if p.get("in") == "path"}
        assert declared == set(re.findall(r"\{(\w+)\}", path)), f"{method} {path}"


def test_every_operation_is_described_and_answers_errors_with_the_envelope() -> None:
    for method, path, op in operations():
        assert op.get("description"), f"{method} {path} has no comment"
        assert op["responses"]["default"] == {"$ref": "#/components/responses/Error"}
    assert "buf:lint" not in json.dumps(DOC), "lint directives leaked into the documentation"
    error = DOC["components"]["responses"]["Error"]["content"]["application/json"]["schema"]
    envelope = DOC["components"]["schemas"][error["$ref"].rsplit("/", 1)[1]]
    assert {"success", "error", "code", "message", "details"} <= envelope["properties"].keys()
    assert envelope["properties"]["success"]["const"] is False
    assert set(envelope["properties"]["error"]["required"]) == {"code", "message"}


def test_error_envelope_accepts_the_spec_example() -> None:
    example = {
        "success": False,
        "error": {"code": "INVALID_PHONE_NUMBER", "message": "`to` is not a valid number"},
        "code": 3,
        "message": "`to` is not a valid number",
        "details": [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "INVALID_PHONE_NUMBER",
                "domain": "zimsend.dev",
            }
        ],
    }
    schema_validator("ErrorEnvelope").validate(example)


def test_api_key_and_client_id_headers_are_required() -> None:
    schemes = DOC["components"]["securitySchemes"]
    headers = {s["name"] for s in schemes.values() if s["type"] == "apiKey" and s["in"] == "header"}
    assert headers == {"X-API-Key", "X-Client-ID"}
    assert DOC["security"] == [{name: [] for name in schemes}]


def test_send_request_accepts_what_zimsend_clients_send() -> None:
    """SPEC.md §1 and §3: priority by number or name, JSON null for optional fields."""
    send = schema_validator("SendSmsRequest")
    for priority in (2, "high", "normal", "very_low", None):
        send.validate(
            {
                "to": "+33612345678",
                "message": "Bonjour",
                "priority": priority,
                "metadata": None,
                "scheduled_at": None,
            }
        )
    assert not send.is_valid({"to": "+33612345678", "message": "x", "priority": "critical"})
    assert not send.is_valid({"message": "no recipient"})
    assert not send.is_valid({"to": "+33612345678", "message": "x", "metadata": "not an object"})


def test_responses_use_proto_names_enum_names_and_rfc3339_times() -> None:
    response = DOC["components"]["schemas"]["SendSmsResponse"]["properties"]
    queued_at = response["queued_at"]
    assert queued_at == {**queued_at, "type": "string", "format": "date-time"}
    schema_validator("SendSmsResponse").validate(
        {
            "success": True,
            "message_id": "msg_1234567890abcdef",
            "status": "queued",
            "to": "+33612345678",
            "queued_at": "2025-01-15T10:30:00Z",
        }
    )
    assert not schema_validator("SendSmsResponse").is_valid({"status": "QUEUED_NOT_A_STATUS"})
    for name, schema in DOC["components"]["schemas"].items():
        for prop in schema.get("properties", {}):
            assert re.fullmatch(r"[a-z][a-z0-9_]*|@type", prop), f"{name}.{prop}"


def test_history_query_parameters_and_faq_example() -> None:
    """`/v1/sms/history?from_date=2025-01-01&to_date=2025-01-31&limit=100` (SPEC.md §4)."""
    params = {p["name"] for p in DOC["paths"]["/v1/sms/history"]["get"]["parameters"]}
    expected = {"page", "limit", "status", "to", "from_date", "to_date", "device_id", "search"}
    assert expected <= params


def test_history_export_serves_csv_and_json_lines() -> None:
    content = DOC["paths"]["/v1/sms/history:export"]["get"]["responses"]["200"]["content"]
    assert {"text/csv", "application/x-ndjson"} <= content.keys()
