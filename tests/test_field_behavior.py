"""What the server sets is annotated OUTPUT_ONLY in the protos (google.api.field_behavior, issue
13 item 3), so the OpenAPI document marks it `readOnly` and a new server-set field cannot be
added unannotated: this test names it."""

from __future__ import annotations

import json
from typing import Any

from google.api import field_behavior_pb2
from google.protobuf import descriptor_pb2

from zimsend.buildtools import codegen

PACKAGE_DIR = codegen.PROTOS / codegen.PACKAGE
FDS = descriptor_pb2.FileDescriptorSet.FromString(
    (PACKAGE_DIR / codegen.DESCRIPTOR_SET).read_bytes()
)
DOC: dict[str, Any] = json.loads((PACKAGE_DIR / codegen.OPENAPI).read_text())
MESSAGES = {
    f".{file.package}.{message.name}": message
    for file in FDS.file
    if file.package == "zimsend.v1"
    for message in file.message_type
}
Field = descriptor_pb2.FieldDescriptorProto


def _output_only(field: Field) -> bool:
    return (
        field_behavior_pb2.OUTPUT_ONLY
        in field.options.Extensions[field_behavior_pb2.field_behavior]
    )


def _reached(roots: list[str], *, through_output_only: bool = True) -> set[str]:
    """The zimsend messages `roots` contain, following message-typed fields (OUTPUT_ONLY ones
    too unless told not to: their whole subtree is then already read-only)."""
    seen: set[str] = set()
    todo = list(roots)
    while todo:
        name = todo.pop()
        if name in seen or name not in MESSAGES:
            continue
        seen.add(name)
        todo += [
            f.type_name
            for f in MESSAGES[name].field
            if f.type == Field.TYPE_MESSAGE and (through_output_only or not _output_only(f))
        ]
    return seen


def _public_methods() -> list[descriptor_pb2.MethodDescriptorProto]:
    """The RPCs of the API (the phones' DeviceLinkService is a stream protocol, not resources)."""
    return [
        method
        for file in FDS.file
        if file.package == "zimsend.v1"
        for service in file.service
        if service.name != "DeviceLinkService"
        for method in service.method
    ]


def test_every_field_the_server_decides_is_output_only() -> None:
    """In what only responses carry, a field is OUTPUT_ONLY unless it is the `success` flag, a
    list or object of such messages (its own fields are checked), or has the name of a request
    field (the caller's own value, echoed: `to`, `name`, `url`, `scheduled_at`...)."""
    methods = _public_methods()
    inputs = _reached([m.input_type for m in methods])
    outputs = _reached([m.output_type for m in methods], through_output_only=False) - inputs
    caller_names = {field.name for name in inputs for field in MESSAGES[name].field}
    unannotated = [
        f"{name[1:]}.{field.name}"
        for name in sorted(outputs)
        for field in MESSAGES[name].field
        if not _output_only(field)
        and field.name != "success"
        and field.name not in caller_names
        and field.type_name not in outputs
    ]
    assert unannotated == []


def test_requests_carry_no_output_only_field_and_say_what_is_required() -> None:
    for name in _reached([m.input_type for m in _public_methods()]):
        for field in MESSAGES[name].field:
            behaviors = set(field.options.Extensions[field_behavior_pb2.field_behavior])
            assert field_behavior_pb2.OUTPUT_ONLY not in behaviors, f"{name}.{field.name}"
            assert behaviors & {field_behavior_pb2.REQUIRED, field_behavior_pb2.OPTIONAL}, (
                f"{name}.{field.name} says neither REQUIRED nor OPTIONAL"
            )


def test_the_openapi_document_marks_server_set_fields_read_only() -> None:
    schemas = DOC["components"]["schemas"]
    device = schemas["Device"]["properties"]
    assert device["device_id"]["readOnly"] is True
    assert device["created_at"]["readOnly"] is True
    assert "readOnly" not in device["name"]  # the caller names it (PATCH /v1/devices/{id})
    message = schemas["SmsMessage"]["properties"]
    assert message["status"]["readOnly"] is True
    assert message["error"]["readOnly"] is True
    assert "readOnly" not in message["to"]
    assert schemas["ApiKey"]["properties"]["last4"]["readOnly"] is True
    for name, schema in schemas.items():
        if name.endswith("Request"):
            assert not any(p.get("readOnly") for p in schema.get("properties", {}).values()), name
