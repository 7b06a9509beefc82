"""The public listener's HTTP filters: health check, the error-envelope Lua filter, the
gRPC-JSON transcoder, the per-API-key local rate limit, the router."""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from zimsend.gateway._settings import (
    _FILTERS,
    _REASON,
    CLUSTER,
    DEVICE_SERVICE,
    ERROR_DOMAIN,
    READINESS_CLUSTER,
    GatewayConfig,
    RateLimit,
)


def _health_check_filter() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.health_check",
        "typed_config": {
            "@type": f"{_FILTERS}.health_check.v3.HealthCheck",
            "pass_through_mode": False,
            "headers": [{"name": ":path", "string_match": {"exact": "/healthz"}}],
            # Healthy while at least one server replica is up and ready (READINESS_CLUSTER).
            "cluster_min_healthy_percentages": {
                CLUSTER: {"value": 1.0},
                READINESS_CLUSTER: {"value": 1.0},
            },
        },
    }


def _lua_filter(config: GatewayConfig) -> dict[str, Any]:
    source = resources.files("zimsend.gateway").joinpath("_errors.lua").read_text("utf-8")
    source = source.replace("__MAX_BODY_BYTES__", str(config.max_request_body_bytes))
    source = source.replace("__ENUM_VALUES__", _lua_enum_table(config.descriptor_path))
    return {
        "name": "envoy.filters.http.lua",
        "typed_config": {
            "@type": f"{_FILTERS}.lua.v3.Lua",
            "default_source_code": {"inline_string": source},
        },
    }


def _lua_enum_table(descriptor_path: Path) -> str:
    """`{["zimsend.v1.Priority"] = "urgent, high, …", …}`: the names an enum accepts, from the
    descriptor set the transcoder loads, so error messages can list them."""
    from google.protobuf import descriptor_pb2

    files: Sequence[descriptor_pb2.FileDescriptorProto]
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes()).file
    except OSError:
        files = []
    entries: dict[str, str] = {}

    def walk(prefix: str, enums: Any, messages: Any) -> None:
        for enum in enums:
            values = [v for v in enum.value if v.number != 0]
            if not values:
                continue
            numbers = sorted(v.number for v in values)
            entries[f"{prefix}.{enum.name}"] = (
                ", ".join(v.name for v in values) + f", or the numbers {numbers[0]}-{numbers[-1]}"
            )
        for message in messages:
            walk(f"{prefix}.{message.name}", message.enum_type, message.nested_type)

    for file in files:
        if file.package.startswith("zimsend."):
            walk(file.package, file.enum_type, file.message_type)
    items = ", ".join(
        f"[{json.dumps(name)}] = {json.dumps(values)}" for name, values in sorted(entries.items())
    )
    return "{" + items + "}"


def _transcoder_filter(config: GatewayConfig) -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.grpc_json_transcoder",
        "typed_config": {
            "@type": f"{_FILTERS}.grpc_json_transcoder.v3.GrpcJsonTranscoder",
            "proto_descriptor": str(config.descriptor_path),
            "services": _rest_services(config.descriptor_path),
            "convert_grpc_status": True,
            "auto_mapping": False,
            "print_options": {
                "add_whitespace": False,
                "always_print_primitive_fields": True,
                "always_print_enums_as_ints": False,
                "preserve_proto_field_names": True,
            },
            "request_validation_options": {
                "reject_unknown_method": True,
                "reject_unknown_query_parameters": True,
                "reject_binding_body_field_collisions": True,
            },
            "case_insensitive_enum_parsing": True,
            "max_request_body_size": config.max_request_body_bytes,
            "max_response_body_size": 64 * 1024 * 1024,
        },
    }


def _rest_services(descriptor_path: Path) -> list[str]:
    """The services the transcoder exposes as REST: every zimsend service of the descriptor
    set but `DEVICE_SERVICE` (phones use the device listener; it has no HTTP bindings)."""
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_path.read_bytes()).file
    names = [
        f"{f.package}.{s.name}"
        for f in files
        if f.package.startswith("zimsend.")
        for s in f.service
    ]
    return [name for name in names if name != DEVICE_SERVICE]


def _rate_limit_filter(config: GatewayConfig) -> dict[str, Any]:
    limit = config.rate_limit
    return {
        "name": "envoy.filters.http.local_ratelimit",
        "typed_config": {
            "@type": f"{_FILTERS}.local_ratelimit.v3.LocalRateLimit",
            "stat_prefix": "per_api_key",
            # The unkeyed bucket; consumed only by requests matching no descriptor.
            "token_bucket": limit.bucket(limit.unkeyed_per_minute),
            "always_consume_default_token_bucket": False,
            "filter_enabled": _always("local_rate_limit_enabled"),
            "filter_enforced": _always("local_rate_limit_enforced"),
            # A wildcard descriptor (no value): one bucket per distinct X-API-Key.
            "descriptors": [
                {
                    "entries": [{"key": "api_key"}],
                    "token_bucket": limit.bucket(limit.requests_per_minute, limit.burst),
                }
            ],
            "rate_limits": [
                {
                    "actions": [
                        {
                            "request_headers": {
                                "header_name": "x-api-key",
                                "descriptor_key": "api_key",
                            }
                        }
                    ]
                }
            ],
            "max_dynamic_descriptors": limit.max_keys,
            "rate_limited_as_resource_exhausted": True,
            "response_headers_to_add": [
                {
                    "header": {"key": "retry-after", "value": str(limit.retry_after_seconds)},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
                # What the server's own RATE_LIMIT_EXCEEDED carries, for native gRPC clients
                # (SPEC §8: RESOURCE_EXHAUSTED with RetryInfo); the Lua filter drops it from
                # REST responses, whose JSON body says the same.
                {
                    "header": {
                        "key": "grpc-status-details-bin",
                        "value": _rate_limit_status_bin(limit),
                    },
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                },
            ],
        },
    }


def rate_limit_message(limit: RateLimit) -> str:
    return (
        f"Too many requests for this API key at this gateway; retry in "
        f"{limit.retry_after_seconds} s (Retry-After)."
    )


def _rate_limit_status_bin(limit: RateLimit) -> str:
    """A serialized google.rpc.Status (base64, as gRPC's `-bin` headers are) matching the
    local rate limit's reply: RESOURCE_EXHAUSTED, ErrorInfo RATE_LIMIT_EXCEEDED, RetryInfo."""
    import base64

    from google.protobuf import any_pb2, duration_pb2
    from google.rpc import error_details_pb2, status_pb2

    details = []
    for message in (
        error_details_pb2.ErrorInfo(
            reason=_REASON.Name(_REASON.RATE_LIMIT_EXCEEDED), domain=ERROR_DOMAIN
        ),
        error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=limit.retry_after_seconds)
        ),
    ):
        packed = any_pb2.Any()
        packed.Pack(message)
        details.append(packed)
    status = status_pb2.Status(code=8, message=rate_limit_message(limit), details=details)
    return base64.b64encode(status.SerializeToString()).decode("ascii")


def _router() -> dict[str, Any]:
    return {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": f"{_FILTERS}.router.v3.Router"},
    }


def _always(runtime_key: str) -> dict[str, Any]:
    return {
        "runtime_key": runtime_key,
        "default_value": {"numerator": 100, "denominator": "HUNDRED"},
    }
