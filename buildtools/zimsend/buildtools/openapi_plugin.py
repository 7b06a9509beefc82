"""protoc-gen-zimsend-openapi: the OpenAPI 3.1 document of ZimSend's REST API.

Why our own plugin: Envoy transcodes REST from the very `google.api.http` annotations this
plugin reads, so the document cannot drift from the gateway; and only we know the JSON that
Envoy prints for our settings (proto field names, enums by name, Timestamp as RFC 3339) and
the error envelope our Lua filter adds (SPEC.md §1). Output is deterministic (sorted keys,
proto declaration order), so a regenerated document is byte-identical.

protoc runs it as `--plugin=protoc-gen-zimsend-openapi=<script> --zimsend-openapi_out=DIR`;
it writes `zimsend/v1/openapi.json` for the RPCs of package zimsend.v1 that have HTTP rules.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from typing import Any

from google.api import annotations_pb2, field_behavior_pb2, http_pb2
from google.protobuf.compiler import plugin_pb2
from google.protobuf.descriptor_pb2 import (
    DescriptorProto,
    EnumDescriptorProto,
    FieldDescriptorProto,
    FileDescriptorProto,
    MethodDescriptorProto,
    ServiceDescriptorProto,
)

PACKAGE = "zimsend.v1"
OUTPUT = "zimsend/v1/openapi.json"
Schema = dict[str, Any]
T = FieldDescriptorProto

_SCALARS: dict[int, Schema] = {
    T.TYPE_DOUBLE: {"type": "number", "format": "double"},
    T.TYPE_FLOAT: {"type": "number", "format": "float"},
    T.TYPE_INT32: {"type": "integer", "format": "int32"},
    T.TYPE_SINT32: {"type": "integer", "format": "int32"},
    T.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    T.TYPE_UINT32: {"type": "integer", "format": "uint32"},
    T.TYPE_FIXED32: {"type": "integer", "format": "uint32"},
    # proto3 JSON prints 64-bit integers as strings (they overflow JavaScript numbers).
    T.TYPE_INT64: {"type": "string", "format": "int64"},
    T.TYPE_SINT64: {"type": "string", "format": "int64"},
    T.TYPE_SFIXED64: {"type": "string", "format": "int64"},
    T.TYPE_UINT64: {"type": "string", "format": "uint64"},
    T.TYPE_FIXED64: {"type": "string", "format": "uint64"},
    T.TYPE_BOOL: {"type": "boolean"},
    T.TYPE_STRING: {"type": "string"},
    T.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
}
_WRAPPERS = {
    "Double": 1,
    "Float": 2,
    "Int64": 3,
    "UInt64": 4,
    "Int32": 5,
    "UInt32": 13,
    "Bool": 8,
    "String": 9,
    "Bytes": 12,
}
# Well-known types as their proto3 JSON forms, inlined rather than listed as components.
_WELL_KNOWN: dict[str, Schema] = {
    ".google.protobuf.Timestamp": {"type": "string", "format": "date-time"},
    ".google.protobuf.Duration": {"type": "string", "pattern": r"^-?[0-9]+(\.[0-9]+)?s$"},
    ".google.protobuf.Struct": {"type": "object", "additionalProperties": True},
    ".google.protobuf.Value": {},
    ".google.protobuf.ListValue": {"type": "array", "items": {}},
    ".google.protobuf.Empty": {"type": "object"},
    ".google.protobuf.FieldMask": {"type": "string", "description": "Comma-separated field paths."},
    ".google.protobuf.Any": {
        "type": "object",
        "required": ["@type"],
        "properties": {"@type": {"type": "string"}},
        "additionalProperties": True,
    },
    **{f".google.protobuf.{k}Value": _SCALARS[t] for k, t in _WRAPPERS.items()},
}
_HTTP_BODY = ".google.api.HttpBody"
_BEHAVIOR, _REQUIRED = field_behavior_pb2.field_behavior, field_behavior_pb2.REQUIRED
# Media types of our HttpBody responses (the history export serves CSV or JSON lines).
_HTTP_BODY_MEDIA = ("application/x-ndjson", "text/csv")
_ERROR = {"$ref": "#/components/responses/Error"}
_ENVELOPE: Schema = {
    "type": "object",
    "description": "ZimSend's envelope (`success`, `error`) and the google.rpc.Status fields "
    "(`code`, `message`, `details`) in one object (SPEC.md §1, §10).",
    "required": ["success", "error", "code", "message"],
    "properties": {
        "success": {"type": "boolean", "const": False},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {
                    "type": "string",
                    "examples": ["INVALID_PHONE_NUMBER"],
                    "description": "Stable upper-case error code (SPEC.md §10).",
                },
                "message": {"type": "string", "description": "What to do about it."},
            },
        },
        "code": {"type": "integer", "format": "int32", "description": "google.rpc.Code."},
        "message": {"type": "string"},
        "details": {
            "type": "array",
            "items": _WELL_KNOWN[".google.protobuf.Any"],
            "description": "google.rpc details; an ErrorInfo's `reason` is `error.code`.",
        },
    },
}
# Optional headers, documented on an operation whose RPC comment names the header, and on the
# send calls (requests with an `idempotency_key` field).
_HEADERS = {
    "DeviceId": ("X-Device-ID", "Pins the phone that sends (SPEC.md §2)."),
    "IdempotencyKey": (
        "Idempotency-Key",
        "A retry with the same key and body within 24 h " + "creates nothing (SPEC.md §3).",
    ),
}
_INFO = {
    "title": "ZimSend API",
    "version": "v1",
    "description": "Send SMS through your own Android phones. Every request carries the "
    "`X-API-Key` and `X-Client-ID` headers. Field names are snake_case; enums "
    "are printed by name and accepted by name or number.",
}


def _comment(text: str) -> str:
    """A proto comment as documentation, without buf's `buf:lint:ignore` directives."""
    lines = textwrap.dedent(text).splitlines()
    return "\n".join(line for line in lines if not line.lstrip().startswith("buf:lint:")).strip()


class _Api:
    """Everything the request declares, indexed by full name, plus the schemas in use."""

    def __init__(self, files: list[FileDescriptorProto]) -> None:
        self.messages: dict[str, tuple[DescriptorProto, str, tuple[int, ...]]] = {}
        self.enums: dict[str, tuple[EnumDescriptorProto, str, tuple[int, ...]]] = {}
        self.comments: dict[tuple[str, tuple[int, ...]], str] = {}
        self.schemas: dict[str, Schema] = {}
        self.inputs: set[str] = set()
        for f in files:
            for loc in f.source_code_info.location:
                if loc.leading_comments:
                    self.comments[(f.name, tuple(loc.path))] = _comment(loc.leading_comments)
            prefix = f".{f.package}" if f.package else ""
            self._index(f.name, prefix, f.message_type, f.enum_type, ())

    def _index(
        self, file: str, prefix: str, messages: Any, enums: Any, path: tuple[int, ...]
    ) -> None:
        in_file = not path
        for i, e in enumerate(enums):
            self.enums[f"{prefix}.{e.name}"] = (e, file, (*path, 5 if in_file else 4, i))
        for i, m in enumerate(messages):
            here = (*path, 4 if in_file else 3, i)
            self.messages[f"{prefix}.{m.name}"] = (m, file, here)
            self._index(file, f"{prefix}.{m.name}", m.nested_type, m.enum_type, here)

    def doc(self, file: str, path: tuple[int, ...]) -> Schema:
        text = self.comments.get((file, path))
        return {"description": text} if text else {}

    def component(self, full_name: str) -> str:
        name = full_name.removeprefix(f".{PACKAGE}.").lstrip(".")
        return f"#/components/schemas/{name}"

    def reach(self, full_name: str, seen: set[str]) -> None:
        """Collect the messages a request can contain (their fields accept JSON null, enum
        numbers)."""
        if full_name in seen or full_name not in self.messages or full_name in _WELL_KNOWN:
            return
        seen.add(full_name)
        for field in self.messages[full_name][0].field:
            if field.type == T.TYPE_MESSAGE:
                self.reach(field.type_name, seen)

    def ref(self, full_name: str) -> Schema:
        """A schema for a message or enum type, adding its component on first use."""
        if full_name in _WELL_KNOWN:
            return dict(_WELL_KNOWN[full_name])
        ref = self.component(full_name)
        key = ref.rsplit("/", 1)[1]
        if key not in self.schemas:
            self.schemas[key] = {}  # placeholder first: message types may be recursive
            if full_name in self.enums:
                self.schemas[key] = self._enum(full_name)
            else:
                self.schemas[key] = self.message(full_name)
        return {"$ref": ref}

    def _enum(self, full_name: str) -> Schema:
        enum, file, path = self.enums[full_name]
        lines = [
            f"- `{v.name}` ({v.number}): {self.comments.get((file, (*path, 2, i)), '')}".rstrip(
                ": "
            )
            for i, v in enumerate(enum.value)
        ]
        intro = self.comments.get((file, path), "")
        text = f"{intro}\n\nResponses print the name; requests may send the name or the number.\n\n"
        return {
            "type": "string",
            "enum": [v.name for v in enum.value],
            "description": (text + "\n".join(lines)).strip(),
        }

    def message(self, full_name: str) -> Schema:
        message, file, path = self.messages[full_name]
        schema: Schema = {"type": "object", **self.doc(file, path), "properties": {}}
        required = []
        for i, field in enumerate(message.field):
            behaviors = set(field.options.Extensions[_BEHAVIOR])
            is_input = full_name in self.inputs
            prop = {**self.field(field, is_input, is_input), **self.doc(file, (*path, 2, i))}
            if _REQUIRED in behaviors:
                required.append(field.name)
            if field_behavior_pb2.OUTPUT_ONLY in behaviors:
                prop["readOnly"] = True
            if field_behavior_pb2.INPUT_ONLY in behaviors:
                prop["writeOnly"] = True
            schema["properties"][field.name] = prop
        if required:
            schema["required"] = required
        return schema

    def field(self, field: FieldDescriptorProto, numbers: bool, nullable: bool = False) -> Schema:
        """A field's JSON form; requests may send enum numbers, and null for singular fields."""
        entry = self.messages.get(field.type_name, (None,))[0]
        if entry is not None and entry.options.map_entry:
            return {"type": "object", "additionalProperties": self.field(entry.field[1], numbers)}
        if field.type == T.TYPE_MESSAGE:
            schema = self.ref(field.type_name)
        elif field.type == T.TYPE_ENUM:
            schema = self.ref(field.type_name)
            if numbers:
                values = [v.number for v in self.enums[field.type_name][0].value]
                schema = {"anyOf": [schema, {"type": "integer", "enum": values}]}
        else:
            schema = dict(_SCALARS[field.type])
        if field.label == T.LABEL_REPEATED:
            return {"type": "array", "items": schema}
        required = _REQUIRED in field.options.Extensions[_BEHAVIOR]
        if nullable and not required and field.type_name != ".google.protobuf.Value":
            schema = _or_null(schema)  # proto3 JSON reads null as "not set"
        return schema

    def query(
        self, message: str, fields_prefix: str, skip: set[str], depth: int = 0
    ) -> list[Schema]:
        """Query parameters: the request's non-path fields, nested messages as `a.b`."""
        found, file, path = self.messages[message]
        params = []
        for i, field in enumerate(found.field):
            name = fields_prefix + field.name
            if name in skip:
                continue
            is_message = field.type == T.TYPE_MESSAGE and field.type_name not in _WELL_KNOWN
            if is_message:
                if depth < 3 and field.label != T.LABEL_REPEATED:
                    params += self.query(field.type_name, name + ".", skip, depth + 1)
                continue
            if field.type_name in (".google.protobuf.Struct", ".google.protobuf.ListValue"):
                continue  # not expressible in a query string
            param = {
                "name": name,
                "in": "query",
                "schema": self.field(field, True),
                **self.doc(file, (*path, 2, i)),
            }
            if _REQUIRED in field.options.Extensions[_BEHAVIOR]:
                param["required"] = True
            if field.label == T.LABEL_REPEATED:
                param["explode"] = True
            params.append(param)
        return params

    def lookup(self, message: str, dotted: str) -> tuple[FieldDescriptorProto, Schema]:
        """The field a path parameter or `body` names, and its description."""
        *parents, last = dotted.split(".")
        for part in parents:
            message = next(f.type_name for f in self.messages[message][0].field if f.name == part)
        found, file, path = self.messages[message]
        i, field = next((i, f) for i, f in enumerate(found.field) if f.name == last)
        return field, self.doc(file, (*path, 2, i))


def _or_null(schema: Schema) -> Schema:
    if "anyOf" in schema:
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    if isinstance(schema.get("type"), str) and "enum" not in schema:
        return {**schema, "type": [schema["type"], "null"]}
    return {"anyOf": [schema, {"type": "null"}]}


def _operation(
    api: _Api,
    service: ServiceDescriptorProto,
    method: MethodDescriptorProto,
    rule: http_pb2.HttpRule,
    comment: Schema,
) -> tuple[str, str, Schema]:
    """One path, HTTP method and operation for one HTTP rule of an RPC."""
    verb = str(rule.WhichOneof("pattern"))
    template = rule.custom.path if verb == "custom" else getattr(rule, verb)
    verb = rule.custom.kind.lower() if verb == "custom" else verb
    names = re.findall(r"\{([^}=]+)(?:=[^}]*)?\}", template)
    path = re.sub(r"\{([^}=]+)(?:=[^}]*)?\}", r"{\1}", template)
    text = comment.get("description", "").lower()
    sends = any(f.name == "idempotency_key" for f in api.messages[method.input_type][0].field)
    params: list[Schema] = [
        {"$ref": f"#/components/parameters/{key}"}
        for key, (header, _) in _HEADERS.items()
        if sends or header.lower() in text
    ]
    for name in names:
        field, doc = api.lookup(method.input_type, name)
        params.append(
            {"name": name, "in": "path", "required": True, "schema": api.field(field, False), **doc}
        )
    op: Schema = {"operationId": f"{service.name}_{method.name}", "tags": [service.name], **comment}
    if comment:  # the first sentence of the first paragraph
        first = comment["description"].split("\n\n")[0].replace("\n", " ")
        op["summary"] = re.split(r"(?<=\.)\s", first, maxsplit=1)[0]
    if rule.body == "*":
        full = api.message(method.input_type)
        required = [name for name in full.get("required", []) if name not in names]
        if names:  # path fields are not in the body: inline the remaining properties
            props = {k: v for k, v in full["properties"].items() if k not in names}
            body = {k: v for k, v in full.items() if k != "required"} | {"properties": props}
            body |= {"required": required} if required else {}
        else:
            body = api.ref(method.input_type)
    elif rule.body:
        field, doc = api.lookup(method.input_type, rule.body)
        body = {**api.field(field, True), **doc}
        required = [rule.body] if _REQUIRED in field.options.Extensions[_BEHAVIOR] else []
        params += api.query(method.input_type, "", set(names) | {rule.body})
    else:
        params += api.query(method.input_type, "", set(names))
    if rule.body:  # an empty body is an empty request message
        op["requestBody"] = {
            "required": bool(required),
            "content": {"application/json": {"schema": body}},
        }
    if params:
        op["parameters"] = params
    if method.output_type == _HTTP_BODY:
        content = {media: {"schema": {"type": "string"}} for media in _HTTP_BODY_MEDIA}
    else:
        schema = api.ref(method.output_type)
        if rule.response_body:
            field, doc = api.lookup(method.output_type, rule.response_body)
            schema = {**api.field(field, False), **doc}
        if method.server_streaming:  # Envoy streams a JSON array of the messages
            schema = {"type": "array", "items": schema}
        content = {"application/json": {"schema": schema}}
    op["responses"] = {"200": {"description": "OK", "content": content}, "default": _ERROR}
    if method.options.deprecated:
        op["deprecated"] = True
    return path, verb, op


def build(request: plugin_pb2.CodeGeneratorRequest) -> Schema:
    """The OpenAPI document for the services of `request`'s files to generate."""
    api = _Api(list(request.proto_file))
    targets = [
        f for f in request.proto_file if f.name in request.file_to_generate and f.package == PACKAGE
    ]
    bound = [
        (f, s, i, j, m)
        for f in targets
        for i, s in enumerate(f.service)
        for j, m in enumerate(s.method)
        if m.options.HasExtension(annotations_pb2.http)
    ]
    for *_, m in bound:
        api.reach(m.input_type, api.inputs)
    paths: dict[str, Schema] = {}
    tags = {}
    for f, service, i, j, method in bound:
        tags[service.name] = api.doc(f.name, (6, i))
        top: http_pb2.HttpRule = method.options.Extensions[annotations_pb2.http]
        for n, rule in enumerate([top, *top.additional_bindings]):
            path, verb, op = _operation(api, service, method, rule, api.doc(f.name, (6, i, 2, j)))
            if n:
                op["operationId"] += f"_{n + 1}"
            paths.setdefault(path, {})[verb] = op
    headers = {"ApiKey": "X-API-Key", "ClientId": "X-Client-ID"}
    return {
        "openapi": "3.1.0",
        "info": _INFO,
        "tags": [{"name": name, **doc} for name, doc in tags.items()],
        "security": [{scheme: [] for scheme in headers}],
        "paths": paths,
        "components": {
            "schemas": {**api.schemas, "ErrorEnvelope": _ENVELOPE},
            "parameters": {
                key: {
                    "name": header,
                    "in": "header",
                    "schema": {"type": "string"},
                    "description": doc,
                }
                for key, (header, doc) in _HEADERS.items()
            },
            "responses": {
                "Error": {
                    "description": "An error (HTTP status per SPEC.md §10).",
                    "content": {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}
                        }
                    },
                }
            },
            "securitySchemes": {
                scheme: {"type": "apiKey", "in": "header", "name": header}
                for scheme, header in headers.items()
            },
        },
    }


def main() -> None:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    try:
        document = build(request)
        text = json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        response.file.add(name=OUTPUT, content=text)
    except (KeyError, StopIteration, ValueError) as error:  # a rule naming a missing field
        response.error = f"protoc-gen-zimsend-openapi: {type(error).__name__}: {error}"
    sys.stdout.buffer.write(response.SerializeToString())


if __name__ == "__main__":
    main()
