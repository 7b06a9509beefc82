"""The public listener's routes (OpenAPI, console, streaming and unary calls) and CORS."""

from __future__ import annotations

from typing import Any

from zimsend.gateway._clusters import _retry_unsent
from zimsend.gateway._console import console_routes, largest_console_file
from zimsend.gateway._settings import (
    _FILTERS,
    CLUSTER,
    DEVICE_SERVICE,
    ERROR_CODE_HEADER,
    STREAMING_METHODS,
    GatewayConfig,
    _duration,
    _file_size,
)


def _public_routes(config: GatewayConfig) -> dict[str, Any]:
    cluster_route = {
        "cluster": CLUSTER,
        "timeout": _duration(config.request_timeout_seconds),
        "retry_policy": _retry_unsent(),
    }
    transcoder_off = {
        "envoy.filters.http.grpc_json_transcoder": {
            "@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig",
            "disabled": True,
        }
    }
    routes: list[dict[str, Any]] = [
        {
            "name": "openapi",
            "match": {
                "path": "/v1/openapi.json",
                "headers": [
                    {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}
                ],
            },
            "direct_response": {
                "status": 200,
                "body": {"filename": str(config.openapi_path)},
            },
            "response_headers_to_add": [
                {
                    "header": {"key": "content-type", "value": "application/json"},
                    "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                }
            ],
            "typed_per_filter_config": transcoder_off,
        },
        # Phones belong on the device listener (gRPC callers see UNIMPLEMENTED).
        {
            "name": "device-link-refused",
            "match": {"prefix": f"/{DEVICE_SERVICE}/"},
            "direct_response": {
                "status": 404,
                "body": {"inline_string": f"{DEVICE_SERVICE} is served on the device port."},
            },
        },
    ]
    # The web console's static files: `/` and `/console/*` (_console.py).
    routes.extend(console_routes())
    for method in STREAMING_METHODS:
        routes.append(
            {
                "name": f"stream:{method}",
                "match": {"path": method},
                "route": {**cluster_route, "timeout": "0s"},
            }
        )
    routes.append({"name": "server", "match": {"prefix": "/"}, "route": cluster_route})
    return {
        "name": "public",
        # The OpenAPI document is ~90 KB; Envoy's default cap for direct responses is 4 KB.
        "max_direct_response_body_size_bytes": max(
            1_048_576, _file_size(config.openapi_path) + 1, largest_console_file() + 1
        ),
        "virtual_hosts": [
            {
                "name": "zimsend",
                "domains": ["*"],
                "typed_per_filter_config": {"envoy.filters.http.cors": _cors_policy(config)},
                "routes": routes,
            }
        ],
    }


def _cors_policy(config: GatewayConfig) -> dict[str, Any]:
    origins = [
        {"safe_regex": {"regex": ".*"}} if origin == "*" else {"exact": origin}
        for origin in config.cors_allow_origins
    ]
    return {
        "@type": f"{_FILTERS}.cors.v3.CorsPolicy",
        "allow_origin_string_match": origins,
        "allow_methods": "GET, POST, PUT, PATCH, DELETE, OPTIONS",
        "allow_headers": ", ".join(
            [
                "content-type",
                "x-api-key",
                "x-client-id",
                "x-device-id",
                "idempotency-key",
                "x-grpc-web",
                "x-user-agent",
                "grpc-timeout",
            ]
        ),
        "expose_headers": ", ".join(
            [
                "retry-after",
                "x-request-id",
                ERROR_CODE_HEADER,
                "grpc-status",
                "grpc-message",
                "grpc-status-details-bin",
            ]
        ),
        "max_age": "86400",
    }
